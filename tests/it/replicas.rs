//! Reads behind one replica address that leads to several standbys (an Aurora reader endpoint,
//! a CloudNativePG `-ro` Service, HAProxy, a DNS name), played by a loopback [`Proxy`] in front
//! of two standbys of one primary: `a`, which replays, and `b`, whose replay is paused.
//! Read-your-writes and lag must hold per server, on the connection that serves the read.

use std::time::{Duration, Instant};

use pool_core::PoolConfig;
use pool_harness::{PgInstance, Proxy};
use pool_postgres::sqlx;
use pool_postgres::{CausalToken, PgCluster, PgManager, PgPooledConnection};

type Result<T = ()> = anyhow::Result<T>;

/// Runs a blocking harness call (psql, pg_ctl) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Polls `condition` every 20 ms until it holds, failing after `secs` seconds: for waiting on
/// a server (a standby replaying, a lag growing), never on our own tasks.
async fn wait_until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut condition: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A primary, two standbys `a` and `b` (`b`'s replay paused), and a proxy leading to `a`, with
/// a table `t` that both standbys replayed before `b` paused.
struct Setup {
    primary: PgInstance,
    a: PgInstance,
    b: PgInstance,
    proxy: Proxy,
}

impl Setup {
    async fn start() -> Result<Setup> {
        let primary = blocking(PgInstance::start)?;
        let a = blocking(|| primary.start_replica())?;
        let b = blocking(|| primary.start_replica())?;
        blocking(|| primary.psql("CREATE TABLE t (n int)"))?;
        for standby in [&a, &b] {
            wait_until(30, "a standby replays the table", async || {
                blocking(|| standby.psql("SELECT count(*) FROM t")).is_ok()
            })
            .await;
        }
        blocking(|| b.psql("SELECT pg_wal_replay_pause()"))?;
        let proxy = Proxy::start(a.port()).await?;
        Ok(Setup { primary, a, b, proxy })
    }

    fn replica_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.proxy.port())
    }

    /// A cluster over the primary and the proxy: every checkout is pinged (so a connection the
    /// proxy cut is replaced at once), and `configure` sets the rest.
    fn cluster(
        &self,
        configure: impl FnOnce(pool_postgres::ClusterBuilder) -> pool_postgres::ClusterBuilder,
    ) -> Result<PgCluster> {
        let mut config = PoolConfig::default();
        config.pool_size = 2;
        config.min_idle = Some(0);
        config.pre_ping_bypass = Duration::ZERO;
        config.pool_timeout = Duration::from_secs(5);
        config.connect_timeout = Duration::from_secs(2);
        let builder = PgCluster::builder("main", PgManager::from_url(&self.primary.url())?)
            .replica(PgManager::from_url(&self.replica_url())?)
            .config(config)
            .replica_timeout(Duration::from_secs(2));
        Ok(configure(builder).build()?)
    }

    /// Inserts `n` on the primary and returns the token taken after it.
    async fn write(&self, cluster: &PgCluster, n: i32) -> Result<CausalToken> {
        let mut w = cluster.session().await?;
        sqlx::query("INSERT INTO t VALUES ($1)").bind(n).execute(&mut *w).await?;
        Ok(CausalToken::after_write(&mut w).await?)
    }
}

/// The port of the server a session reached (`a`, `b` or the primary).
async fn server_port(conn: &mut PgPooledConnection) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT inet_server_port()").fetch_one(&mut **conn).await?)
}

/// Whether the session sees row `n`.
async fn sees(conn: &mut PgPooledConnection, n: i32) -> Result<bool> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE n = $1")
        .bind(n)
        .fetch_one(&mut **conn)
        .await?;
    Ok(count == 1)
}

/// With the lag probe off, a causal read checked its replay position on
/// `a`; then the address moves to `b`. The same token must not be taken as proved for `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_read_proves_its_token_on_the_server_that_serves_it() -> Result {
    let setup = Setup::start().await?;
    let cluster = setup.cluster(|b| b.lag_probe_interval(None))?;
    let token = setup.write(&cluster, 1).await?;
    let lsn = token.to_string();
    wait_until(30, "a replays the write", async || {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        blocking(|| setup.a.psql(&sql)).is_ok_and(|t| t == "t")
    })
    .await;
    let mut r = cluster.session_read_only_after(&token).await?;
    assert_eq!(server_port(&mut r).await?, i32::from(setup.a.port()), "served by a");
    assert!(sees(&mut r, 1).await?);
    drop(r);

    // The address now leads to b, and the connections to a are cut.
    setup.proxy.retarget(setup.b.port());
    setup.proxy.cut();
    for round in 0..3 {
        let mut r = cluster.session_read_only_after(&token).await?;
        let port = server_port(&mut r).await?;
        assert!(
            sees(&mut r, 1).await?,
            "round {round}: a causal read on port {port} missed its write"
        );
        assert_ne!(
            port,
            i32::from(setup.b.port()),
            "round {round}: served by b, which lacks the write"
        );
        drop(r);
    }
    assert_eq!(cluster.stats().causal_primary_reads, 3, "each went to the primary");
    cluster.close().await?;
    Ok(())
}

/// The lag probe's own connection stays on `a` while the pool's
/// connections reach the paused `b`. Causal reads must still see their writes, and plain reads
/// must not go to `b` once it lags past `max_replica_lag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_measured_per_server_not_per_address() -> Result {
    let setup = Setup::start().await?;
    let max_lag = Duration::from_secs(1);
    let cluster = setup.cluster(|b| {
        b.lag_probe_interval(Some(Duration::from_millis(100))).max_replica_lag(Some(max_lag))
    })?;
    // The probe has its connection (to a) before the address moves; the pool has none yet.
    wait_until(30, "the probe measures a", async || cluster.stats().replicas[0].lag.is_some())
        .await;
    assert_eq!(cluster.replicas()[0].state().open, 0, "no pool connection before the move");
    setup.proxy.retarget(setup.b.port());

    let mut missed = 0;
    for n in 0..10 {
        let token = setup.write(&cluster, n).await?;
        // As in the report, the read comes once the probe has seen the write replayed (on a),
        // or once the cluster knows that the address leads to more than one server.
        wait_until(30, "the probe sees the write replayed", async || {
            let r = &cluster.stats().replicas[0];
            r.servers > 1 || r.replay_lsn.is_some_and(|lsn| lsn >= token.lsn())
        })
        .await;
        let mut r = cluster.session_read_only_after(&token).await?;
        if !sees(&mut r, n).await? {
            missed += 1;
        }
        drop(r);
    }
    assert_eq!(missed, 0, "causal reads missed their writes");

    // b's replay stopped before every write above: once its last replayed transaction is
    // older than max_replica_lag, plain reads must not reach it.
    wait_until(30, "b is behind by more than max_replica_lag", async || {
        let sql = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) > 2";
        blocking(|| setup.b.psql(sql)).is_ok_and(|t| t == "t")
    })
    .await;
    for round in 0..5 {
        let mut r = cluster.session_read_only().await?;
        let port = server_port(&mut r).await?;
        assert_ne!(
            port,
            i32::from(setup.b.port()),
            "round {round}: a plain read went to the lagging b"
        );
        drop(r);
    }
    let stats = cluster.stats();
    assert_eq!(stats.replicas[0].servers, 2, "a and b seen behind one address: {stats:?}");
    assert!(stats.replicas[0].lag.is_some_and(|lag| lag > max_lag), "b's lag shows: {stats:?}");
    cluster.close().await?;
    Ok(())
}
