//! Which server a replica connection reached, and how far behind the primary each server of a
//! replica is: one address (a load balancer, a Kubernetes Service, a DNS name) may lead to
//! several standbys, so the cluster keeps replay positions and lag per server, never per URL.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use tokio::time::Instant;

use crate::connection::PgConn;
use crate::token::Lsn;

/// A server as a connection finds it: the address and port it accepted the connection on, and
/// when its postmaster started. Connections that report the same identity reached the same
/// server; a standby restarted, or another one behind the same address, reports another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServerId(String);

/// What one [`QUERY`] found on a connection.
#[derive(Debug, Clone)]
pub(crate) struct Sighting {
    pub(crate) server: ServerId,
    /// `pg_last_wal_replay_lsn()`: `None` on a server that is not in recovery.
    pub(crate) replay: Option<Lsn>,
    /// Seconds since the last transaction the server replayed committed on the primary.
    pub(crate) ts_lag: Option<f64>,
    /// `pg_is_in_recovery()`: false on a primary, a promoted standby among them.
    pub(crate) in_recovery: bool,
}

/// The text of [`QUERY`], for `concat!`.
macro_rules! sight_sql {
    () => {
        "SELECT pg_catalog.inet_server_addr()::text, pg_catalog.inet_server_port(), \
         pg_catalog.pg_postmaster_start_time()::text, pg_catalog.pg_last_wal_replay_lsn()::text, \
         extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())::float8, \
         pg_catalog.pg_is_in_recovery()"
    };
}

/// The server's identity and replay position, in one round trip.
const QUERY: &str = sight_sql!();

/// What marks the lag probe's queries in `pg_stat_activity`, so an operator (or a test counting
/// the pools' connections) can tell the probe's own connections apart.
pub(crate) const PROBE_MARK: &str = "/* pool-postgres lag probe */";

/// [`QUERY`] as the lag probe sends it.
const PROBE_QUERY: &str = concat!("/* pool-postgres lag probe */ ", sight_sql!());

type Row = (Option<String>, Option<i32>, Option<String>, Option<String>, Option<f64>, bool);

fn sighting(row: Row) -> Result<Sighting, sqlx::Error> {
    let (addr, port, started, replay, ts_lag, in_recovery) = row;
    let replay = replay
        .map(|t| t.parse().map_err(|e: crate::TokenError| sqlx::Error::Decode(e.into())))
        .transpose()?;
    // A Unix socket has no address: its path names one server, and the start time tells a
    // restart apart.
    let addr = addr.unwrap_or_else(|| "local".to_owned());
    let port = port.map_or_else(String::new, |p| p.to_string());
    let started = started.unwrap_or_default();
    let server = ServerId(format!("{addr}:{port} started {started}"));
    Ok(Sighting { server, replay, ts_lag, in_recovery })
}

/// Runs [`QUERY`] on a pooled connection, without counting it as a use (it changes nothing),
/// and remembers the answer on the connection.
pub(crate) async fn sight(conn: &mut PgConn) -> Result<Sighting, sqlx::Error> {
    let seen = sighting(conn.fetch_own::<Row>(QUERY).await?)?;
    conn.saw(&seen);
    Ok(seen)
}

/// Runs [`QUERY`] on one of the lag probe's own connections.
pub(crate) async fn sight_bare(conn: &mut PgConnection) -> Result<Sighting, sqlx::Error> {
    sighting(sqlx::query_as::<_, Row>(PROBE_QUERY).fetch_one(conn).await?)
}

/// The servers seen behind one replica's address, with their lag.
#[derive(Debug, Default)]
pub(crate) struct Servers(HashMap<ServerId, Lag>);

#[derive(Debug, Clone, Copy)]
struct Lag {
    at: Instant,
    replay: Option<Lsn>,
    lag: Option<Duration>,
    lag_bytes: Option<u64>,
    lagging: bool,
}

impl Servers {
    /// Records what `seen` found at `at`, with the lag worked out from it (`None` when the
    /// primary's positions are not known yet, or the server is not a standby): a server is
    /// lagging past `max`, and again in rotation under half of it. Returns whether it is lagging.
    pub(crate) fn record(
        &mut self,
        seen: &Sighting,
        lag: Option<(Duration, u64)>,
        max: Option<Duration>,
        at: Instant,
    ) -> bool {
        let was = self.0.get(&seen.server).is_some_and(|l| l.lagging);
        let lagging = match (lag, max) {
            (Some((lag, _)), Some(max)) => {
                if was {
                    lag > max / 2
                } else {
                    lag > max
                }
            }
            _ => false,
        };
        let entry = Lag {
            at,
            replay: seen.replay,
            lag: lag.map(|(l, _)| l),
            lag_bytes: lag.map(|(_, b)| b),
            lagging,
        };
        self.0.insert(seen.server.clone(), entry);
        lagging
    }

    /// Whether `server` is in rotation, as measured within `fresh` of `now`: `None` when it was
    /// not measured that recently (or never), so the caller measures it on its connection.
    pub(crate) fn usable(&self, server: &ServerId, now: Instant, fresh: Duration) -> Option<bool> {
        self.0
            .get(server)
            .filter(|l| now.saturating_duration_since(l.at) < fresh)
            .map(|l| !l.lagging)
    }

    /// Forgets servers not seen within `keep` (a standby gone from behind the address).
    pub(crate) fn forget_older(&mut self, now: Instant, keep: Duration) {
        self.0.retain(|_, l| now.saturating_duration_since(l.at) < keep);
    }

    /// How many servers were seen.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether reads should skip the replica: every server seen is lagging.
    pub(crate) fn all_lagging(&self) -> bool {
        !self.0.is_empty() && self.0.values().all(|l| l.lagging)
    }

    /// The worst lag among the servers (the replica's lag as stats report it), with its WAL
    /// bytes.
    pub(crate) fn worst(&self) -> (Option<Duration>, Option<u64>) {
        let lag = self.0.values().filter_map(|l| l.lag).max();
        let bytes = self.0.values().filter_map(|l| l.lag_bytes).max();
        (lag, bytes)
    }

    /// The lowest replay position among the servers: what every one of them has replayed.
    pub(crate) fn replayed_by_all(&self) -> Option<Lsn> {
        if self.0.values().any(|l| l.replay.is_none()) {
            return None;
        }
        self.0.values().filter_map(|l| l.replay).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_query_carries_its_mark() {
        assert!(PROBE_QUERY.starts_with(PROBE_MARK));
        assert!(PROBE_QUERY.ends_with(QUERY));
    }

    fn seen(server: &str, replay: u64) -> Sighting {
        Sighting {
            server: ServerId(server.to_owned()),
            replay: Some(Lsn(replay)),
            ts_lag: None,
            in_recovery: true,
        }
    }

    #[test]
    fn each_server_lags_on_its_own_with_hysteresis() {
        let now = Instant::now();
        let max = Some(Duration::from_secs(10));
        let mut servers = Servers::default();
        let secs = |s| Some((Duration::from_secs(s), 100));
        assert!(!servers.record(&seen("a", 5), secs(1), max, now));
        assert!(servers.record(&seen("b", 1), secs(11), max, now));
        assert!(!servers.all_lagging(), "a is in rotation");
        assert_eq!(servers.worst(), (Some(Duration::from_secs(11)), Some(100)));
        assert_eq!(servers.replayed_by_all(), Some(Lsn(1)));
        // b stays out until under half of max.
        assert!(servers.record(&seen("b", 2), secs(6), max, now));
        assert!(!servers.record(&seen("b", 3), secs(4), max, now));
        let fresh = Duration::from_secs(1);
        assert_eq!(servers.usable(&ServerId("b".into()), now, fresh), Some(true));
        assert_eq!(servers.usable(&ServerId("c".into()), now, fresh), None, "never seen");
        let later = now + Duration::from_secs(2);
        assert_eq!(servers.usable(&ServerId("a".into()), later, fresh), None, "stale");
        servers.forget_older(later, fresh);
        assert_eq!(servers.len(), 0);
    }

    #[test]
    fn unknown_lag_is_not_lagging() {
        let mut servers = Servers::default();
        assert!(!servers.record(&seen("a", 1), None, Some(Duration::from_secs(1)), Instant::now()));
        assert!(!servers.all_lagging());
    }
}
