//! [`RedisConnection`]: one fred client checked out for exclusive use, and [`Owned`], a fred
//! client that owns its connection task (closing its socket when dropped), with the factory
//! that opens both kinds of clients.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use std::sync::Arc;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, MetricsInterface};
use fred::types::config::{
    Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy, ServerConfig, TcpConfig,
    TlsConfig, UnresponsiveConfig,
};
use fred::types::{ConnectHandle, MultipleKeys};
use tokio::task::JoinHandle;

use crate::auth::Credentials;
use crate::config::PoolSettings;
use crate::hook::OnConnect;

/// An exclusive connection: one fred [`Client`] with one socket, used by one task at a time.
///
/// Derefs to the fred client, so every fred command works on it (`conn.get(..)`,
/// `conn.blpop(..)`, `conn.multi()`, `conn.custom(..)`...).
///
/// # What the pool does on return
///
/// The next user gets the session a fresh connection has, or a fresh connection. The pool
/// cannot see what was sent through `Deref`, so on every return, in one round trip before the
/// connection is handed out again (over a Redis Cluster, on the socket to each master, a
/// command at a time), it sends:
///
/// 1. `RESET` (Redis 6.2+), which discards a `MULTI`, unwatches, unsubscribes (`SUBSCRIBE`,
///    `PSUBSCRIBE`, `SSUBSCRIBE`), ends `MONITOR`, `CLIENT TRACKING`, `CLIENT REPLY OFF` and
///    `READONLY`, selects database 0, switches to RESP2, clears the `CLIENT SETNAME` name and
///    authenticates as `default` (7.2+ also clears `CLIENT NO-EVICT` and `CLIENT NO-TOUCH`);
/// 2. what the connect set up: `AUTH [user] password` when the URL has a password,
///    `SELECT db` when it names a database other than 0.
///
/// Each reply must be exactly its command's (`RESET`, `OK`): any other, or none within
/// `command_timeout` (and `connect_timeout`), closes the connection instead. That is the fate
/// of a connection left out of step with fred: `SUBSCRIBE` or `MONITOR` sent through `custom`
/// (fred drops the confirmation, or takes a monitored line for a reply), `CLIENT REPLY OFF` or
/// `SKIP`, a RESP3 push after `HELLO 3`; fred's own `subscribe`, `hello` and `multi` keep it in
/// step. On a server older than 6.2, every return closes the connection (logged once as a
/// warning).
///
/// Closed without a reset:
///
/// - a connection with a command still in flight that holds the socket (a blocking command
///   whose future was dropped, like a `BLPOP` cancelled by a `select!` or a timeout, or any
///   command still queued in fred): the server would keep it blocked, and could hand the next
///   pushed element to a caller that is gone. Closing the socket makes the server drop the
///   blocked command at once;
/// - a connection whose socket dropped (killed, a server restart), at return, at checkout, or
///   by the pool's maintenance. It never reconnects by itself;
/// - a connection whose reply was overdue by `command_timeout` and a quarter more (a second at
///   most): fred closes its socket (a frozen server, a network gone silent), so it counts as
///   dropped from then on, though the server may still hold it. Blocking commands are exempt.
///
/// Not reset: `CLIENT NO-EVICT` and `CLIENT NO-TOUCH` on Redis 7.0 and 7.1, whose `RESET`
/// keeps them (turning them off on every return would cost every pool a command for a setting
/// only an administrator's connection uses), `CLIENT SETINFO` (7.2+; `RESET` keeps it by
/// design), and what lives in the fred
/// client rather than on the server (event listeners such as `on_message`, settings changed
/// with `update_perf_config`). Do not keep clones of the client past the checkout: the pool
/// closes the socket when it retires the connection.
pub struct RedisConnection {
    owned: Owned,
    watching: AtomicBool,
}

impl RedisConnection {
    pub(crate) fn new(owned: Owned) -> Self {
        RedisConnection { owned, watching: AtomicBool::new(false) }
    }

    /// The fred client (also reachable through `Deref`).
    pub fn client(&self) -> &Client {
        &self.owned.client
    }

    /// Sends `WATCH keys` and remembers it for [`is_watching`](Self::is_watching). Shadows fred's
    /// `KeysInterface::watch` (the method syntax `conn.watch(..)` calls this one). A `WATCH`
    /// sent any way ends on return all the same (`RESET`).
    ///
    /// # Errors
    ///
    /// fred's error when the command fails.
    pub async fn watch<K>(&self, keys: K) -> Result<(), Error>
    where
        K: Into<MultipleKeys> + Send,
    {
        self.watching.store(true, Relaxed);
        KeysInterface::watch(&self.owned.client, keys).await
    }

    /// Sends `UNWATCH` and forgets earlier [`watch`](Self::watch)es.
    ///
    /// # Errors
    ///
    /// fred's error when the command fails.
    pub async fn unwatch(&self) -> Result<(), Error> {
        KeysInterface::unwatch(&self.owned.client).await?;
        self.watching.store(false, Relaxed);
        Ok(())
    }

    /// Whether a `WATCH` may be active (sent through [`watch`](Self::watch) since the checkout
    /// and not cleared by [`unwatch`](Self::unwatch); an `EXEC` does not clear it).
    pub fn is_watching(&self) -> bool {
        self.watching.load(Relaxed)
    }

    /// Whether a command that holds the socket is still in flight: a blocking command not yet
    /// answered, or a command still queued in fred. Reads fred's own state, no IO.
    pub fn has_command_in_flight(&self) -> bool {
        self.owned.has_command_in_flight()
    }

    /// Whether the client is connected. An exclusive connection does not reconnect: once its
    /// socket drops, the task driving it ends (fred may still report its state as connected).
    pub fn is_connected(&self) -> bool {
        !self.owned.task.is_finished() && self.owned.client.is_connected()
    }

    pub(crate) fn clear_watching(&self) {
        self.watching.store(false, Relaxed);
    }

    pub(crate) fn into_owned(self) -> Owned {
        self.owned
    }
}

impl Deref for RedisConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.owned.client
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("client", &self.owned.client.id())
            .field("connected", &self.is_connected())
            .field("watching", &self.is_watching())
            .finish()
    }
}

/// A fred client and the task that drives its connection. Dropping it aborts the task, which
/// closes the socket (the server then frees the client, blocked or not), and the client's event
/// listeners.
pub(crate) struct Owned {
    pub(crate) client: Client,
    task: ConnectHandle,
    /// A shared client's listeners: the connect hook after each reconnect, and the report of a
    /// refused credential.
    listeners: Vec<JoinHandle<Result<(), Error>>>,
}

impl Owned {
    pub(crate) fn has_command_in_flight(&self) -> bool {
        // fred's router marks a connection blocked when it writes a blocking command and
        // unmarks it when the answer arrives; commands not yet written are counted in its
        // queue. This reads fred's (doc-hidden) client state: there is no public accessor,
        // and `tests/it/redis.rs` pins the behaviour. fred marks a blocking command once its
        // write returns: one dropped before that (the server may already hold it) is not seen
        // here, and the return's `RESET` then waits behind it until its bound and the
        // connection is closed as a failed reset, not reused.
        self.client.command_queue_len() > 0 || self.client.inner().backchannel.is_blocked()
    }

    /// `QUIT`, bounded by `bound`, unless the connection is gone or a command holds the
    /// socket; then the socket closes.
    pub(crate) async fn close(self, bound: Duration) {
        if !self.task.is_finished() && self.client.is_connected() && !self.has_command_in_flight() {
            let _ = tokio::time::timeout(bound, self.client.quit()).await;
        }
        drop(self);
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// Opens fred clients with one pool's settings: the URL's config, TLS, credentials, timeouts,
/// TCP keepalive, what runs on every new connection and, for the shared clients, the reconnect
/// policy; never resending a command.
///
/// Exclusive connections do not reconnect by themselves: one whose socket drops stays down,
/// its holder's next command fails, and the engine closes it and opens another. A silent
/// reconnect mid-checkout would drop the server's `WATCH` (an `EXEC` would then commit without
/// its check) and any `SELECT`.
#[derive(Debug, Clone)]
pub(crate) struct ClientFactory {
    config: Config,
    perf: PerformanceConfig,
    connection: ConnectionConfig,
    policy: ReconnectPolicy,
    /// Whether clients get `policy` (the shared ones) or none (exclusive connections).
    reconnect: bool,
    credentials: Credentials,
    on_connect: Arc<OnConnect>,
    /// `host:port` or the socket's path, for errors.
    server: String,
    /// The whole bound of one connect.
    connect_timeout: Duration,
}

/// Keepalive: first probe after this long idle.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Keepalive: then a probe this often.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The unresponsive check runs at least this often...
const UNRESPONSIVE_MAX_INTERVAL: Duration = Duration::from_secs(1);
/// ...and at most this often.
const UNRESPONSIVE_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// fred's check for a connection whose reply is overdue by `bound` (a command timeout): fred
/// closes such a connection (an exclusive one then stays down and is replaced; a shared one
/// reconnects), checking every quarter of the bound, at least every second. Blocking commands
/// are exempt (fred marks the connection blocked while one runs). No bound, no check.
///
/// The check's own bound is one interval longer than the command's, so the caller of the
/// overdue command gets its timeout (an error of kind `Timeout`) rather than the closed
/// socket's error, unless its task is kept from running for longer than that interval.
fn unresponsive(bound: Option<Duration>) -> UnresponsiveConfig {
    let interval = bound.map_or(UNRESPONSIVE_MAX_INTERVAL, |b| {
        (b / 4).clamp(UNRESPONSIVE_MIN_INTERVAL, UNRESPONSIVE_MAX_INTERVAL)
    });
    UnresponsiveConfig { max_timeout: bound.map(|b| b + interval), interval }
}

/// Reconnect delays start here and double up to `max_reconnect_delay`.
const RECONNECT_MIN_DELAY_MS: u32 = 50;
/// Up to this much random delay is added to each reconnect delay.
const RECONNECT_JITTER_MS: u32 = 50;

impl ClientFactory {
    /// The same factory for the shared, multiplexed clients, with their own command timeout
    /// (`shared_command_timeout`). Their sockets keep Nagle's algorithm on, so the many small
    /// commands of concurrent callers leave in fewer segments (measured: 0.65× → 1.0× one bare
    /// fred client's throughput at 16 tasks). Exclusive connections keep `TCP_NODELAY`: a
    /// transaction's commands are written one by one and must not wait for an acknowledgement.
    pub(crate) fn for_shared(&self, settings: &PoolSettings) -> ClientFactory {
        let mut shared = self.clone();
        shared.reconnect = true;
        shared.connection.tcp.nodelay = None;
        shared.perf.default_command_timeout =
            settings.shared_command_timeout.unwrap_or(Duration::ZERO);
        shared.connection.unresponsive = unresponsive(settings.shared_command_timeout);
        shared
    }

    /// fred's configuration of every client this factory opens.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Where the clients' passwords come from.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// What runs on every new connection.
    pub(crate) fn on_connect(&self) -> &Arc<OnConnect> {
        &self.on_connect
    }

    /// Connects every client over TLS with `tls`, checking the server's certificate against the
    /// URL's host name.
    ///
    /// A server that does not speak TLS on the port never answers the handshake (Redis waits
    /// for the end of a line that a `ClientHello` does not hold): the TCP connect and handshake
    /// get most of `connect_timeout`, and the rest goes to a plaintext `PING` that tells such a
    /// server from one that is slow or unreachable.
    pub(crate) fn tls(mut self, tls: rustls::ClientConfig) -> Self {
        let connector = fred::types::config::TlsConnector::from(tls);
        self.config.tls = Some(TlsConfig::from(connector));
        self.connection.connection_timeout = self.connect_timeout * 4 / 5;
        self
    }

    /// fred's connection settings of every client this factory opens.
    #[cfg(test)]
    pub(crate) fn connection_config(&self) -> &ConnectionConfig {
        &self.connection
    }

    pub(crate) fn new(mut config: Config, settings: &PoolSettings) -> Self {
        // `fail_fast` is fred's setting for the first connect only: its error comes back at once
        // instead of being retried in the background. While a client reconnects, a command
        // either fails at once ("Failed to route command": no socket to write to, and fred may
        // not resend, see `max_command_attempts`) or waits in fred's queue for the reconnect,
        // bounded by `command_timeout`. `Block` queues a command behind a
        // blocking one on the same client (the pool never shares an exclusive client).
        config.fail_fast = true;
        config.blocking = fred::types::config::Blocking::Block;
        let perf = PerformanceConfig {
            default_command_timeout: settings.command_timeout.unwrap_or(Duration::ZERO),
            ..PerformanceConfig::default()
        };
        let keepalive = settings.socket_keepalive.then(|| {
            fred::socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
        });
        let connection = ConnectionConfig {
            connection_timeout: settings.pool.connect_timeout,
            internal_command_timeout: settings.pool.connect_timeout,
            // A command in flight when a connection drops fails rather than being sent again:
            // only `RedisPool::idempotent` retries, and only idempotent commands.
            max_command_attempts: 1,
            tcp: TcpConfig {
                nodelay: Some(true),
                keepalive,
                user_timeout: settings.tcp_user_timeout,
                ..TcpConfig::default()
            },
            unresponsive: unresponsive(settings.command_timeout),
            ..ConnectionConfig::default()
        };
        let max_delay = u32::try_from(settings.max_reconnect_delay.as_millis()).unwrap_or(u32::MAX);
        // Retry forever (0), exponential from 50 ms (base 2) up to `max_reconnect_delay`.
        let mut policy = ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY_MS.min(max_delay),
            max_delay,
            2,
        );
        policy.set_jitter(RECONNECT_JITTER_MS);
        let credentials = Credentials::new(&config, settings.provider());
        let server = match &config.server {
            ServerConfig::Centralized { server } => format!("{}:{}", server.host, server.port),
            ServerConfig::Unix { path } => path.display().to_string(),
            other => format!("{:?}", other.hosts()),
        };
        ClientFactory {
            config,
            perf,
            connection,
            policy,
            reconnect: false,
            credentials,
            on_connect: Arc::new(settings.on_connect_steps()),
            server,
            connect_timeout: settings.pool.connect_timeout,
        }
    }

    /// Opens one client, waits for its first connection and runs what runs on every new
    /// connection (`connect_commands`, the hook). A shared client gets listeners that run them
    /// again after each reconnect, and report a refused credential to the provider.
    ///
    /// The connect runs in its own task: if this future is dropped, a connection made after
    /// all is closed rather than leaked.
    ///
    /// # Errors
    ///
    /// fred's error (a TLS failure said in TLS terms, naming the server), or the failure of a
    /// connect command or of the hook.
    pub(crate) async fn open(&self) -> Result<Owned, Error> {
        let mut config = self.config.clone();
        let adapter = self.credentials.install(&mut config);
        let client = Client::new(
            config,
            Some(self.perf.clone()),
            Some(self.connection.clone()),
            self.reconnect.then(|| self.policy.clone()),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let c = client.clone();
        let on_connect = Arc::clone(&self.on_connect);
        let reconnect = self.reconnect;
        let tls = match (&self.config.tls, &self.config.server) {
            (Some(_), ServerConfig::Centralized { server }) => {
                let probe = (self.connect_timeout / 5).max(Duration::from_millis(50));
                Some((server.host.to_string(), server.port, probe))
            }
            _ => None,
        };
        let server = self.server.clone();
        tokio::spawn(async move {
            let result = match c.init().await {
                Ok(task) => {
                    let mut owned = Owned { client: c, task, listeners: Vec::new() };
                    match on_connect.run(&owned.client).await {
                        Ok(()) => {
                            if reconnect {
                                owned.listen(&on_connect, adapter);
                            }
                            Ok(owned)
                        }
                        // Dropping `owned` closes the connection.
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    if let Some(adapter) = &adapter {
                        adapter.check(&e);
                    }
                    Err(match tls {
                        Some((host, port, bound)) => {
                            crate::tls::explain(e, &server, (&host, port, bound)).await
                        }
                        None => e,
                    })
                }
            };
            // If nobody waits any more, the value comes back and is dropped, closing it.
            let _ = tx.send(result);
        });
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(Error::new(ErrorKind::Canceled, "connect task ended without a result")),
        }
    }
}

impl Owned {
    /// A shared client's listeners: after each reconnect, the connect commands and hook again
    /// (a failure is logged; the client keeps serving); after each failed reconnect, the
    /// provider told if the server refused its credential.
    fn listen(
        &mut self,
        on_connect: &Arc<OnConnect>,
        adapter: Option<Arc<crate::auth::FredCredentials>>,
    ) {
        if !on_connect.is_empty() {
            let on_connect = Arc::clone(on_connect);
            let client = self.client.clone();
            self.listeners.push(self.client.on_reconnect(move |_server| {
                let (on_connect, client) = (Arc::clone(&on_connect), client.clone());
                async move {
                    // On its own task: the listener must not wait on the client it serves.
                    tokio::spawn(async move {
                        if let Err(e) = on_connect.run(&client).await {
                            tracing::warn!(client = %client.id(), error = %e, "a shared client reconnected, but its connect commands or hook failed");
                        }
                    });
                    Ok(())
                }
            }));
        }
        if let Some(adapter) = adapter {
            self.listeners.push(self.client.on_error(move |(error, _server)| {
                adapter.check(&error);
                async { Ok(()) }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exclusive connections get `command_timeout` and `TCP_NODELAY`; the shared clients get
    /// `shared_command_timeout` (none when it is off) and Nagle.
    #[test]
    fn shared_clients_have_their_own_command_timeout() {
        let config = Config::from_url("redis://127.0.0.1:6379").unwrap();
        let settings = PoolSettings::default()
            .command_timeout(Some(Duration::from_secs(3)))
            .shared_command_timeout(Some(Duration::from_secs(7)));
        let exclusive = ClientFactory::new(config.clone(), &settings);
        let shared = exclusive.for_shared(&settings);
        assert_eq!(exclusive.perf.default_command_timeout, Duration::from_secs(3));
        assert_eq!(shared.perf.default_command_timeout, Duration::from_secs(7));
        assert_eq!(exclusive.connection.tcp.nodelay, Some(true));
        assert_eq!(shared.connection.tcp.nodelay, None);
        // A reply overdue by the command timeout closes the connection.
        let overdue = |ms| Some(Duration::from_millis(ms));
        assert_eq!(exclusive.connection.unresponsive.max_timeout, overdue(3750));
        assert_eq!(exclusive.connection.unresponsive.interval, Duration::from_millis(750));
        assert_eq!(shared.connection.unresponsive.max_timeout, overdue(8000));
        assert_eq!(shared.connection.unresponsive.interval, Duration::from_secs(1));
        assert_eq!(shared.connection.tcp.user_timeout, Some(Duration::from_secs(20)));

        let off = settings.shared_command_timeout(None);
        let shared = ClientFactory::new(config, &off).for_shared(&off);
        assert_eq!(shared.perf.default_command_timeout, Duration::ZERO, "fred's 'no timeout'");
        assert_eq!(shared.connection.unresponsive.max_timeout, None);
        let fast = unresponsive(Some(Duration::from_millis(20)));
        assert_eq!(fast.interval, Duration::from_millis(10));
    }
}
