//! [`Server`]: the pools of a config, the admin API on a socket, the optimizer's sampling loop
//! (and the auto-tuner when enabled), and a graceful shutdown that closes the pools.
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
use pool_optimizer::{AutoTuner, TunerSettings};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::api::{AdminState, ApiError, router};
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
    limits: Limits,
}

/// How much the server gives its clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time to send a request's headers (or, kept alive, the next request's), and for a request
    /// to be answered.
    pub(crate) request_timeout: Duration,
    /// Clients served at once; the next waits in the listen backlog.
    pub(crate) max_connections: usize,
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
        let state = AdminState::builder(pools.registry.clone(), token.clone())
            .metrics_open(config.admin.metrics_open)
            .dashboard(config.admin.dashboard)
            .health_timeout(secs(config.admin.health_timeout).unwrap_or(Duration::from_secs(2)))
            .budgets(pools.budgets.clone())
            .config(serde_json::to_value(config).unwrap_or_default());
        #[cfg(feature = "postgres")]
        let state = state.clusters(pools.clusters.clone());
        #[cfg(feature = "redis")]
        let state = match &pools.redis {
            Some(redis) => state.redis(redis.clone()),
            None => state,
        };
        let state = state.build();
        let interval = secs(config.admin.sample_interval).unwrap_or(Duration::from_secs(10));
        let optimizer = tokio::spawn(optimize(state.clone(), interval, config.admin.auto_tune));
        let limits = Limits {
            request_timeout: secs(config.admin.request_timeout).unwrap_or(Duration::from_secs(30)),
            max_connections: config.admin.max_connections.max(1),
        };
        Ok(Server { listener, addr, state, pools, token, generated_token, optimizer, limits })
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
    /// (for up to `request_timeout`) and closes every pool.
    ///
    /// At most `max_connections` clients are served at once. A client has `request_timeout` to
    /// send a request's headers, and a kept-alive connection that sends nothing for that long
    /// is closed; a request not answered within it (a body sent slowly) gets a 408.
    ///
    /// # Errors
    ///
    /// None today: accept errors (a client gone, file descriptors exhausted) are logged and
    /// retried, as `axum::serve` does. The `Result` leaves room for a failure that ends serving.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        serve(self.listener, router(self.state.clone()), self.limits, shutdown).await;
        self.optimizer.abort();
        self.pools.close().await;
        Ok(())
    }
}

/// The accept loop behind [`Server::run`]: `app` with the [`Limits`], until `shutdown`.
pub(crate) async fn serve(
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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

    use super::{Limits, serve};

    /// Bounds a step that must end, so a broken server fails the test instead of hanging it.
    async fn ends<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .unwrap_or_else(|_| panic!("{what} never happened"))
    }

    /// A server answering `GET /` and echoing `POST /`, with a `request_timeout` of 200 ms;
    /// returns its address, a way to stop it, and its task.
    async fn start(
        max_connections: usize,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        start_with(max_connections, Duration::from_millis(200)).await
    }

    /// [`start`] with another `request_timeout`.
    async fn start_with(
        max_connections: usize,
        request_timeout: Duration,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/", post(|body: String| async move { body }));
        let limits = Limits { request_timeout, max_connections };
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
    async fn past_max_connections_the_next_client_waits_for_a_slot() {
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

    #[test]
    fn a_generated_token_is_128_random_bits_in_hex() {
        let a = super::generate_token().unwrap();
        let b = super::generate_token().unwrap();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.expose());
        assert_ne!(a.expose(), b.expose(), "two tokens are never the same");
    }
}
