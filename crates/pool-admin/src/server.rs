//! [`Server`]: the pools of a config, the admin API on a socket, the optimizer's sampling loop
//! (and the auto-tuner when enabled), and a graceful shutdown that closes the pools.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_optimizer::{AutoTuner, TunerSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{AdminState, router};
use crate::config::{AdminConfig, Secret, secs};
use crate::pools::{Pools, StartError};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error(
        "refusing to listen on {0} without an admin token: set POOL_ADMIN_TOKEN or admin.token, or listen on a loopback address"
    )]
    TokenRequired(SocketAddr),
    /// The pools could not start.
    #[error(transparent)]
    Pools(#[from] StartError),
    /// No token was configured and the operating system gave no randomness to make one.
    #[error("cannot generate an admin token: {0}; set POOL_ADMIN_TOKEN or admin.token")]
    Random(String),
    /// The address could not be bound, or serving failed.
    #[error("admin server on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// 128 bits from the operating system's random source, in hex: a token nobody can guess from the
/// process's start time.
fn generate_token() -> Result<Secret, ServeError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ServeError::Random(e.to_string()))?;
    Ok(Secret(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}

/// A bound admin server with its pools, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    state: AdminState,
    pools: Arc<Pools>,
    token: Secret,
    generated_token: bool,
    optimizer: JoinHandle<()>,
}

impl Server {
    /// Starts the pools of `config`, binds the admin address and starts the optimizer's loop.
    /// Without a configured token the server makes one up (printed by `serve`), and refuses a
    /// non-loopback address.
    ///
    /// # Errors
    ///
    /// [`ServeError`] naming what failed.
    pub async fn bind(config: &AdminConfig) -> Result<Server, ServeError> {
        let listen = config.admin.listen;
        let (token, generated_token) = match &config.admin.token {
            Some(t) => (t.clone(), false),
            None if listen.ip().is_loopback() => (generate_token()?, true),
            None => return Err(ServeError::TokenRequired(listen)),
        };
        if !listen.ip().is_loopback() {
            tracing::warn!(%listen, "the admin API speaks plain HTTP: beyond loopback its bearer token crosses the network in the clear; put a TLS proxy in front of it");
        }
        let pools = Arc::new(Pools::start(config).await?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Io { addr: listen, source })?;
        let addr =
            listener.local_addr().map_err(|source| ServeError::Io { addr: listen, source })?;
        let mut state = AdminState::builder(pools.registry.clone(), token.clone())
            .clusters(pools.clusters.clone())
            .metrics_open(config.admin.metrics_open)
            .dashboard(config.admin.dashboard)
            .health_timeout(secs(config.admin.health_timeout).unwrap_or(Duration::from_secs(2)))
            .budgets(pools.budgets.clone())
            .config(serde_json::to_value(config).unwrap_or_default());
        if let Some(redis) = &pools.redis {
            state = state.redis(redis.clone());
        }
        let state = state.build();
        let interval = secs(config.admin.sample_interval).unwrap_or(Duration::from_secs(10));
        let optimizer = tokio::spawn(optimize(state.clone(), interval, config.admin.auto_tune));
        Ok(Server { listener, addr, state, pools, token, generated_token, optimizer })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token the admin routes require.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Whether the token was made up at start (no token configured).
    pub fn token_was_generated(&self) -> bool {
        self.generated_token
    }

    /// The API's state (the pools, the optimizer).
    pub fn state(&self) -> &AdminState {
        &self.state
    }

    /// The running pools.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Serves until `shutdown` completes, then stops taking requests, finishes those in flight
    /// and closes every pool.
    ///
    /// # Errors
    ///
    /// [`ServeError::Io`] when serving fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = router(self.state.clone());
        let result = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        self.optimizer.abort();
        self.pools.close().await;
        result.map_err(|source| ServeError::Io { addr: self.addr, source })
    }
}

/// Samples every `interval`; with `auto_tune`, also decides and resizes.
async fn optimize(state: AdminState, interval: Duration, auto_tune: bool) {
    let mut tuner = auto_tune.then(|| {
        AutoTuner::new(TunerSettings::default(), Default::default(), state.budgets().to_vec())
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.sample();
        let Some(tuner) = tuner.as_mut() else { continue };
        let before = tuner.log().len();
        for change in tuner.decide(&state.windows()) {
            let Some(pool) = state.registry().get(&change.pool) else { continue };
            match state.resize_within_budgets(&pool, change.pool_size, change.max_overflow) {
                Ok(()) => {
                    tracing::info!(pool = %change.pool, pool_size = change.pool_size, "auto-tuner resized the pool")
                }
                Err(e) => {
                    tracing::warn!(pool = %change.pool, error = %e, "auto-tuner resize refused")
                }
            }
        }
        let log = tuner.log();
        state.record_decisions(&log[before.min(log.len())..]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_generated_token_is_128_random_bits_in_hex() {
        let a = super::generate_token().unwrap();
        let b = super::generate_token().unwrap();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.expose());
        assert_ne!(a.expose(), b.expose(), "two tokens are never the same");
    }
}
