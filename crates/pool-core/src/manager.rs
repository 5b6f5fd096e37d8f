//! The [`Manager`] trait: what a backend implements so the engine can pool its connections.

use std::future::Future;

/// Opens, checks and resets connections of one backend; the engine does everything else.
///
/// Methods that do IO return `impl Future + Send`, so the typed engine pays no boxing. Methods
/// that must not do IO (`needs_reset`, `is_broken`) are plain functions called on the hot path.
///
/// A method that panics fails only the operation it was called for: a panicking `connect` is a
/// connect error ([`ConnectError::Panicked`](crate::ConnectError::Panicked)), a panicking
/// `check` a failed check, and a panic in `reset`, `needs_reset`, `is_broken` or `close` closes
/// the connection. The pool's counts stay right and it goes on serving.
///
/// # Examples
///
/// ```
/// use pool_core::Manager;
///
/// #[derive(Debug)]
/// struct Echo;
///
/// impl Manager for Echo {
///     type Connection = u32;
///     type Error = std::io::Error;
///     const BACKEND: &'static str = "echo";
///
///     async fn connect(&self) -> Result<u32, std::io::Error> {
///         Ok(7)
///     }
///
///     async fn check(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
///         Ok(())
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The pooled connection.
    type Connection: Send + 'static;
    /// What `connect`, `check` and `reset` fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The backend's name as metrics report it (`db.system.name`): `postgresql`, `redis`...
    const BACKEND: &'static str;

    /// Opens one connection. The engine bounds it with `connect_timeout` and runs it as its own
    /// task, so a caller that stops waiting does not abandon a half-open connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that a connection is alive with the cheapest real round trip (`SELECT 1`, `PING`).
    /// The engine bounds it with `connect_timeout`; a failure closes the connection.
    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Says, without IO, whether a returned connection carries state that [`reset`](Self::reset)
    /// must clear before anyone else gets it (an open transaction, a `WATCH`).
    ///
    /// When it returns `false` (the default), the connection goes straight back to the pool.
    fn needs_reset(&self, conn: &Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Clears per-session state on return (`ROLLBACK`, `UNWATCH`); runs only when
    /// [`needs_reset`](Self::needs_reset) said so. A failure closes the connection.
    fn reset(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// Says, without IO, whether a connection is known broken (its socket closed, a protocol
    /// error seen). A broken connection is closed on return instead of being pooled, and an
    /// idle one that broke is closed at checkout, or by maintenance, instead of being handed
    /// out. It runs on every return and checkout, and in maintenance under the pool's lock:
    /// keep it to a few loads.
    fn is_broken(&self, conn: &Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Closes a connection the pool retires. The default drops it. A close still running after
    /// `connect_timeout` is cut off (the connection dropped), so a hung close never holds a
    /// slot.
    fn close(&self, conn: Self::Connection) -> impl Future<Output = ()> + Send {
        drop(conn);
        async {}
    }
}
