//! [`RedisManager`]: how the engine opens, checks, resets and retires exclusive connections.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use fred::error::Error;
use fred::interfaces::ClientLike;

use crate::connection::{ClientFactory, RedisConnection};
use crate::reset::{Failure, SessionReset};

/// Opens one fred client per exclusive connection, for [`pool_core::ConnectionPool`].
///
/// - check: `PING` (the engine runs it before handing out a connection idle longer than
///   `health_check_interval`, and on idle connections in the background);
/// - connect: a fred client, over TLS for `rediss://`, authenticated with the URL's password or
///   the pool's credential provider, then the pool's `connect_commands` and connect hook;
/// - reset on every return: `RESET`, then `AUTH [user] password` when the URL has a password
///   (the provider's current one when the pool has a provider), `SELECT db` when it names a
///   database other than 0, and the pool's `connect_commands`, in one round trip (over a
///   Cluster, on each master's socket, a command at a time), then the
///   connect hook if any; any other reply than each command's own (an error reply, for a
///   connect command) closes the connection (see [`RedisConnection`]);
/// - broken on return (closed and replaced, no IO to decide): not connected (its socket
///   dropped, or fred closed it because a reply was overdue), or a command still in flight (see
///   [`RedisConnection`]);
/// - close: `QUIT`, or closing the socket when a command still holds it.
pub struct RedisManager {
    pool: String,
    factory: ClientFactory,
    session: SessionReset,
    close_timeout: Duration,
    /// Whether the warning that the server has no `RESET` was logged.
    warned_no_reset: AtomicBool,
}

impl RedisManager {
    pub(crate) fn new(pool: &str, factory: ClientFactory, close_timeout: Duration) -> Self {
        let session = SessionReset::of(&factory);
        RedisManager {
            pool: pool.to_owned(),
            factory,
            session,
            close_timeout,
            warned_no_reset: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisManager").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl pool_core::Manager for RedisManager {
    type Connection = RedisConnection;
    type Error = Error;
    const BACKEND: &'static str = "redis";

    async fn connect(&self) -> Result<RedisConnection, Error> {
        self.factory.open().await.map(RedisConnection::new)
    }

    async fn check(&self, conn: &mut RedisConnection) -> Result<(), Error> {
        conn.client().ping::<()>(None).await
    }

    /// Every returned connection: commands sent through `Deref` (`custom`, `select`, `hello`...)
    /// change the session unseen, and fred 10 counts no commands sent that could tell an unused
    /// connection without IO (only its `metrics` feature does, at a cost on every command).
    fn needs_reset(&self, _conn: &RedisConnection) -> bool {
        true
    }

    async fn reset(&self, conn: &mut RedisConnection) -> Result<(), Error> {
        match self.session.run(conn.client()).await {
            Ok(()) => {
                conn.clear_watching();
                match &self.factory.on_connect().hook {
                    Some(hook) => hook.call(conn.client()).await,
                    None => Ok(()),
                }
            }
            Err(Failure::NoReset(e)) => {
                if !self.warned_no_reset.swap(true, Relaxed) {
                    tracing::warn!(
                        pool = %self.pool,
                        version = ?conn.client().server_version(),
                        "the server has no RESET (Redis 6.2 or newer has): exclusive connections \
                         are closed on return instead of being reused"
                    );
                }
                Err(e)
            }
            Err(Failure::Other(e)) => Err(e),
        }
    }

    fn is_broken(&self, conn: &RedisConnection) -> bool {
        !conn.is_connected() || conn.has_command_in_flight()
    }

    async fn close(&self, conn: RedisConnection) {
        close_connection(conn, self.close_timeout).await;
    }
}

async fn close_connection(conn: RedisConnection, bound: Duration) {
    let owned = conn.into_owned();
    owned.close(bound).await;
}
