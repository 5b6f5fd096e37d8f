//! The shared clients of one pool: a few multiplexed fred clients handed out round-robin, with
//! a background heartbeat.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::Client;
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

    /// One heartbeat: `PING` on every client, bounded by `bound`; a client that does not answer
    /// in time is told to reconnect (its socket may be half-open).
    async fn beat(&self, pool: &str, bound: Duration) {
        for client in self.iter() {
            match tokio::time::timeout(bound, client.ping::<()>(None)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.heartbeat_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool, client = %client.id(), error = %e, "shared client failed its heartbeat");
                }
                Err(_) => {
                    self.heartbeat_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool, client = %client.id(), "shared client heartbeat timed out after {bound:?}; reconnecting it");
                    let _ = tokio::time::timeout(bound, client.force_reconnection()).await;
                }
            }
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
