//! [`Server`] and [`Admin`]: the admin API's state with the optimizer's loop running behind it
//! (its samples, and the auto-tuner when enabled), built from a config ([`Server::bind`], what
//! `pool-admin serve` runs) or from pools a service built in code ([`Server::builder`]). A
//! [`Server`] adds the socket, its accept loop and a graceful shutdown; an [`Admin`] is for a
//! router the service serves itself.
//!
//! The server takes its clients through its own accept loop rather than `axum::serve`, which
//! bounds neither the time a client may take to send its headers nor the number of clients: a
//! few slow or idle sockets could otherwise hold the admin API's file descriptors for ever.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use pool_core::Registry;
use pool_optimizer::{AutoTuner, Budget, TunerSettings};
#[cfg(feature = "postgres")]
use pool_postgres::PgCluster;
#[cfg(feature = "redis")]
use pool_redis::RedisPools;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::api::{AdminState, ApiError, router};
use crate::config::{AdminConfig, Secret, ServerConfig};
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
    /// A setting of the [`ServerBuilder`] (or of the [`AdminConfig`], for one built in code) that
    /// the server cannot run with.
    #[error("admin server setting {setting} = {value}: {reason}")]
    Invalid {
        /// The setting, as the builder's method names it (`sample_interval`).
        setting: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
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

/// A bound admin server with its pools, ready to [`run`](Server::run) (the admin routes alone)
/// or to [`serve`](Server::serve) a service's own app with the admin routes merged in.
///
/// Built from a config with [`Server::bind`], or from pools built in code with
/// [`Server::builder`]. Either way the optimizer's loop runs from the start, as
/// [`Admin`] describes, and stops when serving ends.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    admin: Admin,
    pools: Arc<Pools>,
    close_pools: bool,
    limits: Limits,
}

/// How much the server gives its clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time to send a request's headers (or, kept alive, the next request's), and for a request
    /// to be answered.
    pub(crate) request_timeout: Duration,
    /// Clients served at once; the next waits in the listen backlog.
    pub(crate) max_clients: usize,
}

impl Server {
    /// Starts the pools of `config`, binds the admin address and starts the optimizer's loop.
    /// Without a configured token the server makes one up (printed by `serve`), and refuses a
    /// non-loopback address. [`run`](Server::run) closes the pools when it ends.
    ///
    /// # Errors
    ///
    /// [`ServeError`] naming what failed.
    pub async fn bind(config: &AdminConfig) -> Result<Server, ServeError> {
        let listen = config.admin.listen;
        if config.admin.token.is_none() && !listen.ip().is_loopback() {
            return Err(ServeError::TokenRequired(listen));
        }
        let pools = Pools::start(config).await?;
        let mut builder = ServerBuilder::new(pools)
            .settings(config.admin.clone())
            .read_budgets(false) // `Pools::start` read them, with the config's own.
            .close_pools(true);
        builder.config = serde_json::to_value(config).unwrap_or_default();
        builder.bind().await
    }

    /// A server over `registry`, the pools a service built and registered itself, set up step
    /// by step and started with [`ServerBuilder::bind`] (a socket of its own) or
    /// [`ServerBuilder::start`] (no socket: the router goes into the service's own app).
    ///
    /// Hand it the service's PostgreSQL clusters ([`ServerBuilder::cluster`]) and Redis pools
    /// ([`ServerBuilder::redis`]) too, registered in `registry`, and it gets what `pool-admin
    /// serve` gets from a config: replica health in the routes, redis-py's numbers, and the
    /// servers' connection budgets.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(
    /// #     registry: pool_core::Registry,
    /// #     ctrl_c: impl std::future::Future<Output = ()> + Send + 'static,
    /// # ) -> Result<(), Box<dyn std::error::Error>> {
    /// use pool_admin::{Secret, Server};
    ///
    /// let server = Server::builder(registry)
    ///     .token(Secret("s3cret".to_owned()))
    ///     .listen("127.0.0.1:9187".parse()?)
    ///     .auto_tune(true)
    ///     .bind()
    ///     .await?;
    /// let app = axum::Router::new()
    ///     .route("/hello", axum::routing::get(|| async { "hello" }))
    ///     .merge(server.router());
    /// server.serve(app, ctrl_c).await?; // serves until `ctrl_c` completes
    /// # Ok(()) }
    /// ```
    pub fn builder(registry: Registry) -> ServerBuilder {
        ServerBuilder::new(Pools::empty(registry))
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token the admin routes require.
    pub fn token(&self) -> &Secret {
        self.admin.token()
    }

    /// Whether the token was made up at start (no token configured).
    pub fn token_was_generated(&self) -> bool {
        self.admin.token_was_generated()
    }

    /// The API's state (the pools, the optimizer).
    pub fn state(&self) -> &AdminState {
        self.admin.state()
    }

    /// The pools: a config's, started by [`bind`](Server::bind), or those handed to the
    /// [`ServerBuilder`], with the budgets in force.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// The admin router over this server's state, for [`serve`](Server::serve) to serve merged
    /// into a service's own app.
    pub fn router(&self) -> Router {
        self.admin.router()
    }

    /// Serves the admin routes until `shutdown` completes: [`serve`](Server::serve) with
    /// [`router`](Server::router).
    ///
    /// # Errors
    ///
    /// As [`serve`](Server::serve).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = self.router();
        self.serve(app, shutdown).await
    }

    /// Serves `app` (a service's own routes with [`router`](Server::router) merged in, or any
    /// other) until `shutdown` completes, then stops taking requests, finishes those in flight
    /// (for up to `request_timeout`), stops the optimizer's loop and waits for it to end, and
    /// closes the pools when the server owns them ([`bind`](Server::bind), or
    /// [`ServerBuilder::close_pools`]).
    ///
    /// At most `max_clients` clients are served at once. A client has `request_timeout` to
    /// send a request's headers, and a kept-alive connection that sends nothing for that long
    /// is closed; a request not answered within it (a body sent slowly) gets a 408.
    ///
    /// # Errors
    ///
    /// None today: accept errors (a client gone, file descriptors exhausted) are logged and
    /// retried, as `axum::serve` does. The `Result` leaves room for a failure that ends serving.
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        accept_loop(self.listener, app, self.limits, shutdown).await;
        self.admin.shutdown().await;
        if self.close_pools {
            self.pools.close().await;
        }
        Ok(())
    }
}

/// The admin API's state with the optimizer's loop running behind it, for a router a service
/// serves itself ([`ServerBuilder::start`]): merge [`router`](Admin::router) into its app.
///
/// What runs in the background: one tokio task that, every `sample_interval`, takes a stats
/// sample of every pool in the registry (the windows behind the recommendations of `GET
/// optimize` and `GET stats`) and, with `auto_tune`, lets the auto-tuner resize pools within
/// their connection budgets, keeping its last 100 decisions for `GET optimize`. Nothing else:
/// the routes answer from the requests themselves.
///
/// How it stops: [`shutdown`](Admin::shutdown) stops the task and returns once it has ended;
/// dropping the `Admin` aborts it. The router keeps answering after either (recommendations
/// from the samples taken until then), and the pools are never closed: they are the service's.
#[derive(Debug)]
pub struct Admin {
    state: AdminState,
    token: Secret,
    generated_token: bool,
    optimizer: Optimizer,
}

impl Admin {
    /// The admin router (the API, `/metrics`, the dashboard unless turned off) over this state.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// The API's state: the registry, the optimizer's windows and recommendations.
    pub fn state(&self) -> &AdminState {
        &self.state
    }

    /// The bearer token the admin routes require.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Whether the token was made up at start (none given).
    pub fn token_was_generated(&self) -> bool {
        self.generated_token
    }

    /// Stops the optimizer's loop (sampling and the auto-tuner) and waits for its task to end;
    /// a sample or resize under way finishes first.
    pub async fn shutdown(self) {
        self.optimizer.stop().await;
    }
}

/// The optimizer's loop, running: its task and what stops it.
#[derive(Debug)]
struct Optimizer {
    /// Dropped to stop the task at its next wake-up.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Optimizer {
    /// Spawns [`optimize`] over `state`.
    fn start(state: AdminState, interval: Duration, auto_tune: bool) -> Optimizer {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(optimize(state, interval, auto_tune, stopped));
        Optimizer { stop: Some(stop), task }
    }

    /// Tells the task to stop and waits until it has.
    async fn stop(mut self) {
        drop(self.stop.take());
        // A task that panicked has ended too.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Optimizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds an admin [`Server`] or [`Admin`] over pools built in code: [`Server::builder`].
///
/// The defaults are `pool-admin serve`'s: listen on `127.0.0.1:9187`, a token made up at start,
/// a sample every 10 s, no auto-tuner, health checks of 2 s, requests of 30 s, 128 clients at
/// once, `/metrics` behind the token, the dashboard served; and, unlike `serve`, the pools are
/// left open when serving ends (they are the service's).
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder {
    pools: Pools,
    /// The server's settings, their defaults and rules said once in [`ServerConfig`].
    settings: ServerConfig,
    read_budgets: bool,
    close_pools: bool,
    /// What `GET config` shows besides the pools' live settings: a config's, redacted.
    config: Value,
}

impl ServerBuilder {
    fn new(pools: Pools) -> ServerBuilder {
        ServerBuilder {
            pools,
            settings: ServerConfig::default(),
            read_budgets: true,
            close_pools: false,
            config: Value::Null,
        }
    }

    /// Every setting of the server at once, as `pool-admin serve` reads them from its
    /// configuration's `[admin]` table; the setters below change one each.
    pub fn settings(mut self, settings: ServerConfig) -> Self {
        self.settings = settings;
        self
    }

    /// The bearer token every admin route requires. Without one, a token is made up at start
    /// from the operating system's randomness (read it with `token()`), and
    /// [`bind`](Self::bind) refuses a non-loopback address.
    pub fn token(mut self, token: Secret) -> Self {
        self.settings.token = Some(token);
        self
    }

    /// Where [`bind`](Self::bind) listens \[`127.0.0.1:9187`\]; port 0 takes a free one
    /// ([`Server::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.settings.listen = addr;
        self
    }

    /// A PostgreSQL cluster whose pools are in the registry ([`PgCluster::register`]): its
    /// replicas' bans and lag show in `GET health` and `GET stats`, and its servers' connection
    /// budgets are read at start ([`read_budgets`](Self::read_budgets)). Known by its primary
    /// pool's name. Feature `postgres`.
    #[cfg(feature = "postgres")]
    pub fn cluster(mut self, cluster: PgCluster) -> Self {
        self.pools.clusters.insert(cluster.primary().name().to_owned(), cluster);
        self
    }

    /// The Redis pools, registered in the registry ([`RedisPools::register`]): `GET stats`
    /// reports redis-py's numbers for them, shared clients included, and the Redis server's
    /// client budget is read at start ([`read_budgets`](Self::read_budgets)). Feature `redis`.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, pools: RedisPools) -> Self {
        self.pools.redis = Some(pools);
        self
    }

    /// A connection budget of the service's own: the optimizer never proposes more, and resizes
    /// that would break it are refused. The server reads none for a server one of whose pools
    /// is in such a budget.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.pools.budgets.push(budget);
        self
    }

    /// Whether start-up asks the servers behind the clusters and Redis pools for their
    /// connection budgets \[true\]: each PostgreSQL server its `max_connections` less the
    /// reserved ones, shared by every pool on it; the Redis server its `maxclients` less the
    /// shared clients. A server that does not answer within 5 s gets no budget (with a
    /// warning), and start-up goes on.
    pub fn read_budgets(mut self, read: bool) -> Self {
        self.read_budgets = read;
        self
    }

    /// Whether [`Server::serve`] closes the clusters and Redis pools handed to the builder when
    /// it ends \[false\]: they are the service's.
    pub fn close_pools(mut self, close: bool) -> Self {
        self.close_pools = close;
        self
    }

    /// Time between the optimizer's samples \[10 s\].
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.settings.sample_interval = interval;
        self
    }

    /// Whether the auto-tuner resizes pools within their budgets \[false\].
    pub fn auto_tune(mut self, on: bool) -> Self {
        self.settings.auto_tune = on;
        self
    }

    /// How long one pool's active health check may take \[2 s\].
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.settings.health_timeout = timeout;
        self
    }

    /// Time a client of [`Server::serve`] has to send a request's headers, and a request to be
    /// answered \[30 s\]; also the grace period of the shutdown. Greater than the health
    /// timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// HTTP clients [`Server::serve`] serves at once, 1 to 65536 \[128\]; more wait to be
    /// accepted.
    pub fn max_clients(mut self, max: usize) -> Self {
        self.settings.max_clients = max;
        self
    }

    /// Serve `/metrics` without the token \[false\].
    pub fn metrics_open(mut self, open: bool) -> Self {
        self.settings.metrics_open = open;
        self
    }

    /// Serve the dashboard's page at `/dashboard/` \[true\].
    pub fn dashboard(mut self, serve: bool) -> Self {
        self.settings.dashboard = serve;
        self
    }

    /// Binds the address and starts as [`start`](Self::start) does: a [`Server`] to
    /// [`run`](Server::run) or [`serve`](Server::serve).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); [`ServeError::TokenRequired`] for a non-loopback address
    /// without a token, [`ServeError::Io`] when the address cannot be bound.
    pub async fn bind(self) -> Result<Server, ServeError> {
        self.check()?;
        let listen = self.settings.listen;
        let (token, generated) = match &self.settings.token {
            Some(t) => (t.clone(), false),
            None if listen.ip().is_loopback() => (generate_token()?, true),
            None => return Err(ServeError::TokenRequired(listen)),
        };
        if !listen.ip().is_loopback() {
            tracing::warn!(%listen, "the admin API speaks plain HTTP: beyond loopback its bearer token crosses the network in the clear; put a TLS proxy in front of it");
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Io { addr: listen, source })?;
        let addr =
            listener.local_addr().map_err(|source| ServeError::Io { addr: listen, source })?;
        let limits = Limits {
            request_timeout: self.settings.request_timeout,
            max_clients: self.settings.max_clients,
        };
        let close_pools = self.close_pools;
        let (admin, pools) = self.started(token, generated).await;
        Ok(Server { listener, addr, admin, pools: Arc::new(pools), close_pools, limits })
    }

    /// Reads the budgets ([`read_budgets`](Self::read_budgets)) and starts the optimizer's loop:
    /// an [`Admin`] whose [`router`](Admin::router) a service serves in its own app. Needs a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ServeError::Invalid`] for a setting it cannot run with (a zero duration, a request
    /// timeout not above the health timeout, `max_clients` out of range: [`ServerConfig::check`]) or a cluster or
    /// Redis pool missing from the registry; [`ServeError::Random`] when no token was given and
    /// none can be made.
    pub async fn start(self) -> Result<Admin, ServeError> {
        self.check()?;
        let (token, generated) = match &self.settings.token {
            Some(t) => (t.clone(), false),
            None => (generate_token()?, true),
        };
        Ok(self.started(token, generated).await.0)
    }

    /// What neither [`start`](Self::start) nor [`bind`](Self::bind) can run with.
    fn check(&self) -> Result<(), ServeError> {
        self.settings.check()?;
        let invalid = |setting, value: String, reason: &str| -> Result<(), ServeError> {
            Err(ServeError::Invalid { setting, value, reason: reason.to_owned() })
        };
        let registry = &self.pools.registry;
        #[cfg(feature = "postgres")]
        for name in self.pools.clusters.keys() {
            if registry.get(&format!("postgresql:{name}")).is_none() {
                return invalid(
                    "cluster",
                    name.clone(),
                    "its pools are not in the registry: register them first (PgCluster::register)",
                );
            }
        }
        #[cfg(feature = "redis")]
        for pool in self.pools.redis.iter().flat_map(RedisPools::iter) {
            if registry.get(&format!("redis:{}", pool.name())).is_none() {
                return invalid(
                    "redis",
                    pool.name().to_owned(),
                    "the pool is not in the registry: register the pools first (RedisPools::register)",
                );
            }
        }
        #[cfg(not(any(feature = "postgres", feature = "redis")))]
        let _ = (registry, invalid);
        Ok(())
    }

    /// The budgets read, the state built and the optimizer's loop started.
    async fn started(mut self, token: Secret, generated_token: bool) -> (Admin, Pools) {
        if self.read_budgets {
            self.pools.read_budgets(&Default::default()).await;
        }
        let state = AdminState::builder(self.pools.registry.clone(), token.clone())
            .server(&self.settings)
            .budgets(self.pools.budgets.clone())
            .config(self.config);
        #[cfg(feature = "postgres")]
        let state = state.clusters(self.pools.clusters.clone());
        #[cfg(feature = "redis")]
        let state = match &self.pools.redis {
            Some(redis) => state.redis(redis.clone()),
            None => state,
        };
        let state = state.build();
        let optimizer =
            Optimizer::start(state.clone(), self.settings.sample_interval, self.settings.auto_tune);
        (Admin { state, token, generated_token, optimizer }, self.pools)
    }
}

/// The accept loop behind [`Server::serve`]: `app` with the [`Limits`], until `shutdown`.
pub(crate) async fn accept_loop(
    mut listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let timeout = limits.request_timeout;
    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
        answer_within(timeout, req, next)
    }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(timeout);
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // A slot first, then a client: past the limit, clients wait in the backlog.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let (stream, _peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            // axum's `Listener` retries failed accepts (with a pause when out of descriptors).
            accepted = Listener::accept(&mut listener) => accepted,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin client connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(timeout) => {
            tracing::warn!(?timeout, "admin requests still in flight after the shutdown's grace period: closing the pools without waiting for them");
        }
    }
}

/// A request not answered within `limit` (its body is read inside the handler) gets a 408.
async fn answer_within(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request not answered within {limit:?} (admin.request_timeout)"),
        )
        .into_response(),
    }
}

/// Samples every `interval`; with `auto_tune`, also decides and resizes. Ends when `stop` is
/// sent or dropped.
async fn optimize(
    state: AdminState,
    interval: Duration,
    auto_tune: bool,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tuner = auto_tune.then(|| {
        AutoTuner::new(TunerSettings::default(), Default::default(), state.budgets().to_vec())
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        state.sample();
        let Some(tuner) = tuner.as_mut() else { continue };
        let mark = tuner.decided();
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
        state.record_decisions(tuner.decisions_since(mark));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use pool_core::testing::TestManager;

    use super::{Limits, Secret, Server, accept_loop as serve};

    /// Bounds a step that must end, so a broken server fails the test instead of hanging it.
    async fn ends<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .unwrap_or_else(|_| panic!("{what} never happened"))
    }

    /// A server answering `GET /` and echoing `POST /`, with a `request_timeout` of 200 ms;
    /// returns its address, a way to stop it, and its task.
    async fn start(
        max_clients: usize,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        start_with(max_clients, Duration::from_millis(200)).await
    }

    /// [`start`] with another `request_timeout`.
    async fn start_with(
        max_clients: usize,
        request_timeout: Duration,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/", post(|body: String| async move { body }));
        let limits = Limits { request_timeout, max_clients };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        // A reset instead of a clean close also ends the connection.
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let (addr, _stop, _task) = start(4).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let got = ends("the disconnect", read_to_close(&mut slow)).await;
        assert!(!got.contains("200 OK"), "a request never finished is never answered: {got}");

        // An idle kept-alive connection is closed too, after its answered request.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let got = ends("the disconnect", read_to_close(&mut idle)).await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    }

    #[tokio::test]
    async fn a_body_sent_too_slowly_gets_a_408() {
        let (addr, _stop, _task) = start(4).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            .await
            .unwrap();
        let got = ends("the answer", read_to_close(&mut slow)).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("admin.request_timeout"), "the error names the setting: {got}");
    }

    #[tokio::test]
    async fn past_max_clients_the_next_client_waits_for_a_slot() {
        let (addr, _stop, _task) = start(1).await;
        // The first client takes the only slot and holds it until its header timeout.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let first = first.into_std().unwrap();
        first.set_nonblocking(true).unwrap();

        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let got = ends("the second answer", read_to_close(&mut second)).await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        // The second client was accepted only once the server had closed the first: its close
        // is already here (a read of 0 bytes), not still to come (`WouldBlock`).
        let mut buf = [0u8; 64];
        match std::io::Read::read(&mut &first, &mut buf) {
            Ok(n) => assert_eq!(n, 0, "the first client got an answer: {:?}", &buf[..n]),
            Err(e) => assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "the second client was served while the first held the only slot"
            ),
        }
    }

    /// The grace period (`request_timeout`) is an hour: serving ends because shutdown closes
    /// the kept-alive connection, not because the grace period ran out.
    #[tokio::test]
    async fn shutdown_ends_serving_with_a_client_still_connected() {
        let (addr, stop, task) = start_with(4, Duration::from_secs(3600)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 15];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200 OK");
        stop.send(()).unwrap();
        ends("the end of serving", task).await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    /// A registry of one in-memory pool, `test:app`, of 3 connections and no overflow.
    fn app_pool() -> (pool_core::Registry, pool_core::ConnectionPool<TestManager>) {
        let registry = pool_core::Registry::new();
        let pool = pool_core::ConnectionPool::builder(TestManager::new())
            .name("app")
            .pool_size(3)
            .max_overflow(0)
            .build()
            .unwrap();
        registry.register(std::sync::Arc::new(pool.clone())).unwrap();
        (registry, pool)
    }

    /// `GET <uri>` with the token, through `app` in process: the status and the JSON body.
    async fn get_json(app: &Router, uri: &str) -> (u16, serde_json::Value) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .uri(uri)
            .header("authorization", "Bearer t0ken")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// A router mounted in a service's own app, over the service's own registry, gets the
    /// optimizer's samples and recommendations from the background task; `shutdown` ends that
    /// task, after which no sample is taken. The clock is tokio's, paused: a second of sleep is
    /// a second of the task's timer.
    #[tokio::test(start_paused = true)]
    async fn an_embedded_router_gets_samples_and_recommendations_until_shutdown() {
        let (registry, pool) = app_pool();
        let admin = Server::builder(registry)
            .token(Secret("t0ken".to_owned()))
            .sample_interval(Duration::from_secs(1))
            .start()
            .await
            .unwrap();
        assert!(!admin.token_was_generated());
        let app = Router::new().route("/hello", get(|| async { "hello" })).merge(admin.router());
        for _ in 0..6 {
            // Light traffic: the optimizer shrinks only pools that have some.
            drop(pool.acquire().await.unwrap());
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let (status, body) = get_json(&app, &format!("{}/optimize", crate::PREFIX)).await;
        assert_eq!(status, 200, "{body:#}");
        let windows = body["windows"]["test:app"].as_u64().unwrap();
        assert!(windows >= 5, "a window a second: {body:#}");
        let recs = body["recommendations"].as_array().unwrap();
        assert!(
            recs.iter()
                .any(|r| r["pool"] == "test:app" && r["issue"] == "Too many idle connections"),
            "{body:#}"
        );
        assert_eq!(body["auto_tuner_decisions"], serde_json::json!([]), "no tuner unless asked");

        let state = admin.state().clone();
        let task = admin.optimizer.task.abort_handle();
        admin.shutdown().await;
        assert!(task.is_finished(), "shutdown returns once the task has ended");
        let taken = state.windows()["test:app"].len();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(state.windows()["test:app"].len(), taken, "no sample after shutdown");
        // The router still answers, from the samples taken until then.
        let (status, body) = get_json(&app, &format!("{}/optimize", crate::PREFIX)).await;
        assert_eq!((status, body["windows"]["test:app"].as_u64()), (200, Some(windows)));
        pool.acquire().await.expect("the service's pool stays open");
    }

    /// With `auto_tune`, the background task resizes the service's pools as the recommendations
    /// say, and `GET optimize` lists its decisions.
    #[tokio::test(start_paused = true)]
    async fn the_auto_tuner_resizes_the_services_pool() {
        let (registry, pool) = app_pool();
        let admin = Server::builder(registry)
            .token(Secret("t0ken".to_owned()))
            .sample_interval(Duration::from_secs(1))
            .auto_tune(true)
            .start()
            .await
            .unwrap();
        for _ in 0..8 {
            drop(pool.acquire().await.unwrap());
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let (_, body) = get_json(&admin.router(), &format!("{}/optimize", crate::PREFIX)).await;
        let decisions = body["auto_tuner_decisions"].as_array().unwrap();
        let shrink = decisions.iter().find(|d| d["pool"] == "test:app" && d["action"] == "shrink");
        let shrink = shrink.unwrap_or_else(|| panic!("a shrink of test:app: {body:#}"));
        assert_eq!(pool.config().pool_size, shrink["to"].as_u64().unwrap() as usize, "{body:#}");
        assert!(pool.config().pool_size < 3, "{body:#}");
        admin.shutdown().await;
    }

    /// Dropping the `Admin` ends the background task too, without waiting for it.
    #[tokio::test(start_paused = true)]
    async fn dropping_the_admin_stops_its_samples() {
        let (registry, _pool) = app_pool();
        let admin = Server::builder(registry)
            .sample_interval(Duration::from_secs(1))
            .start()
            .await
            .unwrap();
        assert!(admin.token_was_generated());
        let state = admin.state().clone();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let taken = state.windows()["test:app"].len();
        assert!(taken >= 2, "{taken}");
        drop(admin);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(state.windows()["test:app"].len(), taken, "no sample after the drop");
    }

    /// A server built in code serves the service's own app, admin routes merged in, with the
    /// accept loop's limits, and when serving ends leaves the service's pools open.
    #[tokio::test]
    async fn a_server_built_in_code_serves_the_services_app_and_stops() {
        let (registry, pool) = app_pool();
        let server = Server::builder(registry)
            .token(Secret("t0ken".to_owned()))
            .listen("127.0.0.1:0".parse().unwrap())
            .request_timeout(Duration::from_secs(5))
            .bind()
            .await
            .unwrap();
        let addr = server.local_addr();
        let app = Router::new().route("/hello", get(|| async { "hello" })).merge(server.router());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(app, async move {
            let _ = stopped.await;
        }));
        for (request, expected) in [
            ("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "hello"),
            (
                "GET /api/v1/admin/connection-pools/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nConnection: close\r\n\r\n",
                "\"database_pools\":{\"test:app\"",
            ),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(request.as_bytes()).await.unwrap();
            let got = ends("the answer", read_to_close(&mut client)).await;
            assert!(got.starts_with("HTTP/1.1 200 OK") && got.contains(expected), "{got}");
        }
        stop.send(()).unwrap();
        ends("the end of serving", serving).await.unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
        pool.acquire().await.expect("the service's pool stays open");
    }

    #[tokio::test]
    async fn the_builder_refuses_what_it_cannot_run_with() {
        let (registry, _pool) = app_pool();
        let refused = |builder: super::ServerBuilder| async move {
            builder.start().await.map(drop).unwrap_err().to_string()
        };
        let builder = || Server::builder(registry.clone());
        assert_eq!(
            refused(builder().sample_interval(Duration::ZERO)).await,
            "admin server setting sample_interval = 0: must be a number of seconds greater than zero"
        );
        assert_eq!(
            refused(
                builder()
                    .health_timeout(Duration::from_secs(5))
                    .request_timeout(Duration::from_secs(5))
            )
            .await,
            "admin server setting request_timeout = 5: must be greater than health_timeout (5), or health checks time out as requests"
        );
        assert_eq!(
            refused(builder().max_clients(0)).await,
            "admin server setting max_clients = 0: must be from 1 to 65536 (with 0 no client is ever served)"
        );
        let public = builder().listen("0.0.0.0:0".parse().unwrap()).bind().await;
        assert!(
            matches!(public, Err(super::ServeError::TokenRequired(_))),
            "a public address needs a token: {public:?}"
        );
    }

    #[test]
    fn a_generated_token_is_128_random_bits_in_hex() {
        let a = super::generate_token().unwrap();
        let b = super::generate_token().unwrap();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.expose());
        assert_ne!(a.expose(), b.expose(), "two tokens are never the same");
    }
}
