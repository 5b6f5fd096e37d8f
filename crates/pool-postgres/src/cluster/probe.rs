//! The lag probe: the primary's WAL positions and each replica's replay position, read every
//! period on connections of its own, and the lag of each server behind a replica's address.

use std::collections::VecDeque;
use std::sync::{PoisonError, Weak};
use std::time::Duration;

use futures_core::future::BoxFuture;
use pool_core::Manager;
use sqlx::postgres::PgConnection;
use tokio::time::Instant;

use crate::manager::PgManager;
use crate::server;
use crate::token::Lsn;

use super::*;

/// The lag probe's own connections.
struct Probe {
    primary: Option<PgConnection>,
    replicas: Vec<Option<PgConnection>>,
}

/// How many probe periods a server behind a replica's address may go unseen before the
/// cluster forgets it.
pub(super) const FORGET_AFTER_PERIODS: u32 = 10;

/// How many primary positions the probe remembers to date a replica's replay position.
const HISTORY: usize = 600;

/// The lag probe: every `period`, reads the primary's WAL position and each replica's replay
/// position on connections of its own (outside the pools, so it never waits behind users; its
/// queries start with `/* pool-postgres lag probe */`, as `pg_stat_activity` shows them), and
/// updates bans and the lag of the server its connection reached. Reads measure the other
/// servers behind a replica's address on their own connections (see `Inner::vet`), against the
/// primary positions the probe keeps.
///
/// A replica's lag is the age of the newest primary position it has replayed: zero when it has
/// replayed the primary's current position, else the time since the primary was at the
/// replica's position, interpolated between the two positions the probe saw around it (see
/// [`lag_of`]). This needs no clock agreement between servers and does not grow while the
/// primary is idle; when the replica is behind every remembered position,
/// `now() - pg_last_xact_replay_timestamp()` on the replica is the lower bound used.
pub(super) async fn probe(cluster: Weak<Inner>, period: Duration) {
    let mut state = Probe { primary: None, replicas: Vec::new() };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = cluster.upgrade() else { return };
        state.replicas.resize_with(inner.replicas.len(), || None);
        let timeout = inner.settings.connect_timeout;
        let primary_lsn =
            on_probe_connection(&mut state.primary, inner.primary.manager(), timeout, |c| {
                Box::pin(async move {
                    let sql = "/* pool-postgres lag probe */ SELECT pg_catalog.pg_current_wal_lsn()::text";
                    debug_assert!(sql.starts_with(server::PROBE_MARK));
                    let (lsn,): (String,) = sqlx::query_as(sql).fetch_one(c).await?;
                    lsn.parse::<Lsn>().map_err(|e| sqlx::Error::Decode(e.into()))
                })
            })
            .await
            .ok();
        let now = Instant::now();
        if let Some(lsn) = primary_lsn {
            let mut history = inner.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.back().is_none_or(|(_, last)| *last != lsn) {
                history.push_back((now, lsn));
            } else if let Some(last) = history.back_mut() {
                // Same position as before: the primary was idle, so the newest time it held counts.
                last.0 = now;
            }
            while history.len() > HISTORY {
                history.pop_front();
            }
        }
        for (i, replica) in inner.replicas.iter().enumerate() {
            if replica.health().banned_until.is_some_and(|until| now < until) {
                continue;
            }
            let answer =
                on_probe_connection(&mut state.replicas[i], replica.pool.manager(), timeout, |c| {
                    Box::pin(server::sight_bare(c))
                })
                .await;
            match answer {
                Err(e) => inner.ban(i, e),
                Ok(seen) if !seen.in_recovery => {
                    let mut h = replica.health();
                    h.banned_until = None;
                    if !h.promoted {
                        h.promoted = true;
                        tracing::warn!(cluster = %inner.name, pool = %replica.pool.id(), "replica is no longer in recovery (promoted): out of read rotation");
                    }
                }
                Ok(seen) => {
                    let promoted = {
                        let mut h = replica.health();
                        std::mem::take(&mut h.promoted)
                    };
                    if promoted {
                        tracing::info!(cluster = %inner.name, pool = %replica.pool.id(), "replica is a standby again: back in read rotation");
                    }
                    if replica.health().banned_until.take().is_some() {
                        tracing::info!(cluster = %inner.name, pool = %replica.pool.id(), "replica back in rotation");
                    }
                    inner.record(i, &seen, now);
                }
            }
        }
        drop(inner);
    }
}

/// How far behind a replica at `replay` is, at `now`, given the primary's recent positions
/// (`history`, oldest first, never empty) and the replica's own replay-timestamp lag.
///
/// Zero when it replayed the primary's newest position. Otherwise the time since the primary
/// was at `replay`: between the two remembered positions around it, the time is interpolated
/// by WAL bytes, so under steady writes a replica a few bytes behind reads a few milliseconds,
/// not a whole probe period. Behind every remembered position, the oldest one's age, or the
/// replay-timestamp lag if larger, is the lower bound.
pub(super) fn lag_of(
    history: &VecDeque<(Instant, Lsn)>,
    replay: Lsn,
    now: Instant,
    ts_lag: Option<f64>,
) -> Duration {
    let Some(&(_, current)) = history.back() else { return Duration::ZERO };
    if replay >= current {
        return Duration::ZERO;
    }
    let Some(i) = history.iter().rposition(|(_, lsn)| *lsn <= replay) else {
        let oldest = history.front().map(|(at, _)| now.saturating_duration_since(*at));
        let ts = ts_lag.and_then(|s| Duration::try_from_secs_f64(s).ok());
        return oldest.max(ts).unwrap_or_default();
    };
    let (at, lsn) = history[i];
    let reached = match history.get(i + 1) {
        Some(&(next_at, next_lsn)) if next_lsn > lsn => {
            let share = replay.bytes_since(lsn) as f64 / next_lsn.bytes_since(lsn) as f64;
            at + next_at.saturating_duration_since(at).mul_f64(share.clamp(0.0, 1.0))
        }
        _ => at,
    };
    now.saturating_duration_since(reached)
}

/// Runs `query` on the probe's connection, opening it if needed. A failure on a connection
/// kept from an earlier round is retried once on a new connection: the kept one may have died
/// while nobody used it (a restart, a terminated backend), which says nothing about the server
/// now.
async fn on_probe_connection<T>(
    conn: &mut Option<PgConnection>,
    manager: &PgManager,
    timeout: Duration,
    query: impl for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, String> {
    let kept = conn.is_some();
    match on_probe_connection_once(conn, manager, timeout, &query).await {
        Err(_) if kept => on_probe_connection_once(conn, manager, timeout, &query).await,
        result => result,
    }
}

/// One attempt of [`on_probe_connection`]; a failure drops the connection.
async fn on_probe_connection_once<T>(
    conn: &mut Option<PgConnection>,
    manager: &PgManager,
    timeout: Duration,
    query: &impl for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, String> {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(manager.connect().await.map_err(|e| e.to_string())?.into_inner());
        }
        let c = conn.as_mut().expect("opened above");
        query(c).await.map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("lag probe timed out after {timeout:?}")),
    };
    if result.is_err() {
        *conn = None;
    }
    result
}
