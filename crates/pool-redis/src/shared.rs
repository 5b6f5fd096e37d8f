//! The shared clients of one pool: a few multiplexed fred clients handed out round-robin, with
//! a background heartbeat.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;

use crate::connection::{ClientFactory, Owned};

/// A fixed set of multiplexed clients. Each serves any number of tasks at once (fred pipelines
/// their commands on one socket), so there is nothing to check out.
pub(crate) struct SharedClients {
    clients: Box<[Owned]>,
    next: AtomicUsize,
    pub(crate) heartbeat_failures: AtomicU64,
}

impl SharedClients {
    /// Opens `n` clients at once, each bounded by `connect_timeout`.
    pub(crate) async fn open(
        factory: &ClientFactory,
        n: usize,
        connect_timeout: Duration,
    ) -> Result<Self, Option<fred::error::Error>> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let factory = factory.clone();
            tasks.spawn(async move { tokio::time::timeout(connect_timeout, factory.open()).await });
        }
        let mut clients = Vec::with_capacity(n);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(Ok(owned))) => clients.push(owned),
                Ok(Ok(Err(e))) => return Err(Some(e)),
                // A timeout, or a panicked connect task (which fred does not do).
                Ok(Err(_)) | Err(_) => return Err(None),
            }
        }
        Ok(SharedClients {
            clients: clients.into_boxed_slice(),
            next: AtomicUsize::new(0),
            heartbeat_failures: AtomicU64::new(0),
        })
    }

    /// The next client in turn, skipping clients that are not connected when another is.
    pub(crate) fn next(&self) -> &Client {
        let n = self.clients.len();
        if n == 1 {
            // No shared counter to bump: with one client every caller would contend on its
            // cache line for nothing.
            return &self.clients[0].client;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let first = &self.clients[start % n].client;
        if first.is_connected() {
            return first;
        }
        (1..n)
            .map(|i| &self.clients[(start + i) % n].client)
            .find(|c| c.is_connected())
            .unwrap_or(first)
    }

    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    pub(crate) fn connected(&self) -> usize {
        self.clients.iter().filter(|o| o.client.is_connected()).count()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Client> {
        self.clients.iter().map(|o| &o.client)
    }

    /// `QUIT` on every client, each bounded by `bound`; the sockets close when the set drops.
    pub(crate) async fn close(&self, bound: Duration) {
        for owned in self.clients.iter() {
            if owned.client.is_connected() {
                let _ = tokio::time::timeout(bound, owned.client.quit()).await;
            }
        }
    }

    /// One heartbeat: `PING` on every client, bounded by `bound`; a connected client that does
    /// not answer in time is told to reconnect (its socket may be half-open), one already
    /// reconnecting is left to it. See [`Beat`] for what counts as not answering.
    async fn beat(&self, pool: &str, bound: Duration) {
        for client in self.iter() {
            let result = tokio::time::timeout(bound, client.ping::<()>(None)).await.ok();
            match Beat::of(result) {
                Beat::Alive => {}
                Beat::Failed(e) => {
                    self.heartbeat_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool, client = %client.id(), error = %e, "shared client failed its heartbeat");
                }
                // A client already reconnecting is not told again: fred would queue the request
                // and, once the server is back, tear down the new connection for each one
                // queued during the outage.
                Beat::Unresponsive if !client.is_connected() => {
                    self.heartbeat_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool, client = %client.id(), "shared client heartbeat timed out after {bound:?} while it reconnects");
                }
                Beat::Unresponsive => {
                    self.heartbeat_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool, client = %client.id(), "shared client heartbeat timed out after {bound:?}; reconnecting it");
                    let _ = tokio::time::timeout(bound, client.force_reconnection()).await;
                }
            }
        }
    }
}

/// What one heartbeat `PING` says about a shared client.
#[derive(Debug)]
enum Beat {
    /// It answered.
    Alive,
    /// It failed at once with an error other than a timeout (a closed socket, a client that is
    /// reconnecting already): counted as a heartbeat failure; fred's reconnect policy handles it.
    Failed(Error),
    /// It did not answer in time: counted, and the client is told to reconnect, because its
    /// socket may be half-open (a peer gone without a FIN or RST), which fred does not notice
    /// before TCP keepalive gives up, minutes later if at all.
    /// Either timer may fire first: fred's own per-command timeout (`shared_command_timeout`,
    /// an error of kind [`ErrorKind::Timeout`]) or the heartbeat's bound (`None` here).
    Unresponsive,
}

impl Beat {
    /// Classifies a `PING`'s result, `None` when the heartbeat's bound fired first.
    fn of(result: Option<Result<(), Error>>) -> Beat {
        match result {
            Some(Ok(())) => Beat::Alive,
            Some(Err(e)) if *e.kind() == ErrorKind::Timeout => Beat::Unresponsive,
            Some(Err(e)) => Beat::Failed(e),
            None => Beat::Unresponsive,
        }
    }
}

/// Pings the shared clients every `period` until the pool is dropped or `closed` says so.
pub(crate) fn spawn_heartbeat<T: Send + Sync + 'static>(
    owner: Weak<T>,
    shared: impl Fn(&T) -> Option<&SharedClients> + Send + 'static,
    pool: Arc<str>,
    period: Duration,
    bound: Duration,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(owner) = owner.upgrade() else { return };
            let Some(clients) = shared(&owner) else { return };
            clients.beat(&pool, bound).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fred's own command timeout on a `PING` (it fires before the heartbeat's bound when both
    /// are `shared_command_timeout`) reconnects the client, like the heartbeat's bound does.
    #[test]
    fn a_timeout_from_fred_or_the_bound_reconnects_other_errors_only_count() {
        let timeout = || Error::new(ErrorKind::Timeout, "Request timed out.");
        let io = || Error::new(ErrorKind::IO, "connection reset");
        assert!(matches!(Beat::of(Some(Ok(()))), Beat::Alive));
        assert!(matches!(Beat::of(Some(Err(timeout()))), Beat::Unresponsive));
        assert!(matches!(Beat::of(None), Beat::Unresponsive));
        assert!(matches!(Beat::of(Some(Err(io()))), Beat::Failed(e) if *e.kind() == ErrorKind::IO));
    }
}
