//! [`SentinelGroup`]: a throwaway Redis master, its replica and three sentinels watching them.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{RedisInstance, cli};

/// A Redis master with one replica (`--replicaof`), watched by three sentinels
/// (`redis-server <conf> --sentinel`) that agree on a failover with a quorum of two, all on
/// free loopback ports, each in its own directory; everything stops on drop.
///
/// The sentinels judge a master down after 1 s without an answer
/// (`down-after-milliseconds 1000`) and give a failover 3 s (`failover-timeout 3000`), so a
/// failover completes a few seconds after the master dies.
///
/// # Examples
///
/// ```no_run
/// let mut group = pool_harness::SentinelGroup::start()?;
/// let url = group.url(); // redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster&node=...
/// let old = group.master_port()?;
/// group.kill_master()?;
/// let new = group.wait_for_failover(old, std::time::Duration::from_secs(30))?;
/// assert_ne!(old, new);
/// # let _ = url;
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct SentinelGroup {
    /// The master at the start, then the replica.
    servers: Vec<RedisInstance>,
    sentinels: Vec<RedisInstance>,
}

impl SentinelGroup {
    /// The name the sentinels monitor the master by (`sentinelServiceName`).
    pub const SERVICE: &'static str = "mymaster";

    /// Starts the master, the replica and the three sentinels, and waits (up to 30 s) until the
    /// replica is in sync and every sentinel sees the replica and the other two sentinels.
    ///
    /// # Errors
    ///
    /// Fails if a server cannot start (see [`RedisInstance::start`]), if `redis-cli` is missing,
    /// or if the group is not ready within 30 s.
    pub fn start() -> anyhow::Result<Self> {
        // A replica's first full sync starts at once, not 5 s later.
        let sync_now = ["--repl-diskless-sync-delay", "0"];
        let master = RedisInstance::start_with(&sync_now)?;
        let master_port = master.port().to_string();
        let replica = RedisInstance::start_with(&[
            sync_now[0],
            sync_now[1],
            "--replicaof",
            "127.0.0.1",
            &master_port,
        ])?;
        let conf = format!(
            "sentinel monitor {service} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {service} 1000\n\
             sentinel failover-timeout {service} 3000\n\
             sentinel parallel-syncs {service} 1\n",
            service = Self::SERVICE,
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisInstance::builder().config_file(conf.clone()).sentinel().start()?);
        }
        let group = SentinelGroup { servers: vec![master, replica], sentinels };
        group.wait_until(Duration::from_secs(30), "the replica in sync and 3 sentinels", |g| {
            g.ready()
        })?;
        Ok(group)
    }

    /// `redis-sentinel://127.0.0.1:S1?sentinelServiceName=mymaster&node=127.0.0.1:S2&node=...`:
    /// every sentinel, as fred reads a Sentinel URL.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinels[0].port(),
            Self::SERVICE
        );
        for sentinel in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", sentinel.port()));
        }
        url
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisInstance::port).collect()
    }

    /// The ports of the two data servers (the first master, then the first replica).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(RedisInstance::port).collect()
    }

    /// The master's port as the first sentinel that answers reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Errors
    ///
    /// Fails if no sentinel answers with an address.
    pub fn master_port(&self) -> anyhow::Result<u16> {
        for sentinel in &self.sentinels {
            let reply =
                cli(sentinel.port(), &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE]);
            if let Some(port) = reply.ok().and_then(|r| r.lines().nth(1)?.trim().parse().ok()) {
                return Ok(port);
            }
        }
        bail!("no sentinel reports a master for {}", Self::SERVICE)
    }

    /// Kills the current master (`SIGKILL`), as a crashed machine would go; it stays down.
    ///
    /// # Errors
    ///
    /// Fails if the sentinels report no master, or it is not one of the group's servers.
    pub fn kill_master(&mut self) -> anyhow::Result<u16> {
        let port = self.master_port()?;
        let Some(master) = self.servers.iter_mut().find(|s| s.port() == port) else {
            bail!("the sentinels' master 127.0.0.1:{port} is not one of the group's servers");
        };
        master.stop()?;
        Ok(port)
    }

    /// Asks a sentinel for a failover now (`SENTINEL FAILOVER`): the replica is promoted and the
    /// old master becomes its replica, both still running.
    ///
    /// # Errors
    ///
    /// Fails if the sentinel refuses (no replica in sync, a failover in progress).
    pub fn failover(&self) -> anyhow::Result<()> {
        let reply = cli(self.sentinels[0].port(), &["SENTINEL", "FAILOVER", Self::SERVICE])?;
        if reply.trim() != "OK" {
            bail!("SENTINEL FAILOVER {} answered {}", Self::SERVICE, reply.trim());
        }
        Ok(())
    }

    /// Waits, up to `within`, until every sentinel reports a master other than `old_port`, that
    /// server says it is a master (`ROLE`), and the old master, if it still runs, says it is a
    /// replica, then returns the new master's port: the failover has completed.
    ///
    /// # Errors
    ///
    /// Fails if that does not happen within `within`.
    pub fn wait_for_failover(&self, old_port: u16, within: Duration) -> anyhow::Result<u16> {
        self.wait_until(within, "a failover", |g| g.promoted(old_port))
    }

    /// The new master's port once every sentinel reports one other than `old_port` and it
    /// answers `ROLE` as a master.
    fn promoted(&self, old_port: u16) -> Option<u16> {
        let mut agreed = None;
        for sentinel in &self.sentinels {
            let reply =
                cli(sentinel.port(), &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE])
                    .ok()?;
            let port: u16 = reply.lines().nth(1)?.trim().parse().ok()?;
            if port == old_port || agreed.is_some_and(|p| p != port) {
                return None;
            }
            agreed = Some(port);
        }
        let port = agreed?;
        let role = |port| cli(port, &["ROLE"]).ok()?.lines().next().map(|l| l.trim().to_owned());
        let old_runs = self.servers.iter().any(|s| s.port() == old_port && s.pid().is_some());
        if old_runs && role(old_port)? != "slave" {
            return None;
        }
        (role(port)? == "master").then_some(port)
    }

    /// `Some(())` once the replica is in sync and every sentinel sees it and the others.
    fn ready(&self) -> Option<()> {
        let info = cli(self.servers[1].port(), &["INFO", "replication"]).ok()?;
        if !info.contains("master_link_status:up") {
            return None;
        }
        for sentinel in &self.sentinels {
            let master = cli(sentinel.port(), &["SENTINEL", "MASTER", Self::SERVICE]).ok()?;
            let field = |name: &str| {
                let mut lines = master.lines();
                lines.find(|l| l.trim() == name)?;
                lines.next().map(|v| v.trim().to_owned())
            };
            if field("num-slaves")? != "1" || field("num-other-sentinels")? != "2" {
                return None;
            }
        }
        Some(())
    }

    /// Polls `done` every 50 ms until it gives a value, for up to `within`.
    fn wait_until<T>(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = done(self) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("the Sentinel group showed no {what} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
