//! [`RedisManager`]: how the engine opens, checks, resets and retires exclusive connections.

use std::fmt;
use std::time::Duration;

use fred::error::Error;
use fred::interfaces::{ClientLike, KeysInterface};

use crate::connection::{ClientFactory, RedisConnection};

/// Opens one fred client per exclusive connection, for [`pool_core::ConnectionPool`].
///
/// - check: `PING` (the engine runs it before handing out a connection idle longer than
///   `health_check_interval`, and on idle connections in the background);
/// - reset on return: `UNWATCH`, only when a `WATCH` was sent through
///   [`RedisConnection::watch`];
/// - broken on return (closed and replaced, no IO to decide): not connected, or a command
///   still in flight (see [`RedisConnection`]);
/// - close: `QUIT`, or closing the socket when a command still holds it.
pub struct RedisManager {
    pool: String,
    factory: ClientFactory,
    close_timeout: Duration,
}

impl RedisManager {
    pub(crate) fn new(pool: &str, factory: ClientFactory, close_timeout: Duration) -> Self {
        RedisManager { pool: pool.to_owned(), factory, close_timeout }
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

    fn needs_reset(&self, conn: &RedisConnection) -> bool {
        conn.is_watching()
    }

    async fn reset(&self, conn: &mut RedisConnection) -> Result<(), Error> {
        KeysInterface::unwatch(conn.client()).await?;
        conn.clear_watching();
        Ok(())
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
