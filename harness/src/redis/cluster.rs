//! [`RedisCluster`]: a throwaway Redis Cluster of three masters, each with a replica.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{RedisInstance, cli};
use crate::ports::free_port;

/// A Redis Cluster of three masters, each with one replica (`redis-server --cluster-enabled
/// yes` six times, joined by `redis-cli --cluster create ... --cluster-replicas 1`), on free
/// loopback ports (the cluster bus too, `--cluster-port`), each node in its own directory;
/// everything stops on drop. [`start`](Self::start) returns once every replica is in sync.
///
/// Nodes judge a peer failed after 1 s without an answer (`cluster-node-timeout 1000`), so a
/// replica takes over its master's slots a few seconds after the master dies.
///
/// # Examples
///
/// ```no_run
/// let mut cluster = pool_harness::RedisCluster::start()?;
/// let url = cluster.url(); // redis-cluster://127.0.0.1:PORT?node=127.0.0.1:PORT&node=...
/// let killed = cluster.kill_master()?;
/// cluster.wait_for_failover(killed.port, std::time::Duration::from_secs(30))?;
/// # let _ = url;
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisInstance>,
}

/// A master that [`RedisCluster::kill_master`] killed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KilledMaster {
    /// Its port.
    pub port: u16,
    /// The slot ranges it served, `(first, last)`, both included.
    pub slots: Vec<(u16, u16)>,
}

impl KilledMaster {
    /// Whether it served `slot`.
    pub fn served(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct Node {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits (up to 30 s) until every node reports
    /// `cluster_state:ok` and knows all six.
    ///
    /// # Errors
    ///
    /// Fails if a node cannot start (see [`RedisInstance::start`]), if `redis-cli` is missing or
    /// refuses to create the cluster, or if the cluster is not ready within 30 s.
    pub fn start() -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port().to_string();
            nodes.push(RedisInstance::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus,
                // A replica's first full sync starts at once, not 5 s later.
                "--repl-diskless-sync-delay",
                "0",
            ])?);
        }
        let addresses: Vec<String> =
            nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cli(nodes[0].port(), &args)?;
        if !out.contains("[OK] All 16384 slots covered") {
            bail!("redis-cli --cluster create failed: {out}");
        }
        let cluster = RedisCluster { nodes };
        // Ready when every node sees a healthy cluster of six and every replica is in sync (a
        // replica that never synced would refuse to take over).
        cluster.wait_until(Duration::from_secs(30), "all six nodes in a healthy cluster", |c| {
            c.nodes.iter().all(|n| {
                let ok = cli(n.port(), &["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
                });
                ok && cli(n.port(), &["INFO", "replication"]).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            })
        })?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=...`: every node, as fred reads a
    /// Cluster URL.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    /// Kills (`SIGKILL`) a master that has a replica; it stays down.
    ///
    /// # Errors
    ///
    /// Fails if no node answers `CLUSTER NODES` or no master has a replica.
    pub fn kill_master(&mut self) -> anyhow::Result<KilledMaster> {
        let nodes = self.cluster_nodes()?;
        let Some(master) = nodes.iter().find(|n| n.master && !n.failed && !n.slots.is_empty())
        else {
            bail!("no master serves slots: {nodes:?}");
        };
        let killed = KilledMaster { port: master.port, slots: master.slots.clone() };
        let Some(instance) = self.nodes.iter_mut().find(|n| n.port() == killed.port) else {
            bail!("master 127.0.0.1:{} is not one of the cluster's nodes", killed.port);
        };
        instance.stop()?;
        Ok(killed)
    }

    /// Waits, up to `within`, until a live node reports the master on `killed_port` failed, its
    /// slots served by another master, and `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// Fails if that does not happen within `within`.
    pub fn wait_for_failover(&mut self, killed_port: u16, within: Duration) -> anyhow::Result<()> {
        self.wait_until(within, "a failover", |c| {
            let Ok(nodes) = c.cluster_nodes() else { return false };
            let old = nodes.iter().find(|n| n.port == killed_port);
            let ok = c.live().any(|n| {
                cli(n.port(), &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            ok && old.is_some_and(|o| o.failed && o.slots.is_empty())
        })
    }

    /// The nodes still running.
    fn live(&self) -> impl Iterator<Item = &RedisInstance> {
        self.nodes.iter().filter(|n| n.pid().is_some())
    }

    /// `CLUSTER NODES` as the first live node that answers sees it.
    fn cluster_nodes(&self) -> anyhow::Result<Vec<Node>> {
        for node in self.live() {
            if let Ok(out) = cli(node.port(), &["CLUSTER", "NODES"]) {
                let parsed: Vec<Node> = out.lines().filter_map(parse_node).collect();
                if !parsed.is_empty() {
                    return Ok(parsed);
                }
            }
        }
        bail!("no node of the cluster answers CLUSTER NODES")
    }

    /// Polls `done` every 50 ms until it holds, for up to `within`.
    fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !done(self) {
            if Instant::now() > deadline {
                bail!("the cluster showed {what} not within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_node(line: &str) -> Option<Node> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(Node {
        port,
        master: flags.contains("master"),
        failed: flags.contains("fail") && !flags.contains("fail?"),
        slots,
    })
}
