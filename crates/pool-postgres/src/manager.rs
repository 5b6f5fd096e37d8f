//! [`PgManager`]: opens, checks, resets and closes pooled [`PgConn`]s for `pool-core`.

use std::fmt;
use std::str::FromStr;

use pool_core::Manager;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::connection::{PgConn, ResetOnReturn};
use crate::error::UrlError;

/// Opens `sqlx::PgConnection`s for a [`ConnectionPool`](pool_core::ConnectionPool), and checks
/// and resets them:
///
/// - check: a protocol-level `Sync` message answered by `ReadyForQuery` (sqlx's `ping`), the
///   cheapest real round trip to the server process; the pool bounds it with `connect_timeout`;
/// - reset on return: nothing after a ping or `SELECT`s of constants; after anything else,
///   one round trip in the background that rolls back a transaction the server reports open
///   and, by default, resets the session ([`ResetOnReturn`] names the exact statements); an
///   interrupted query is drained first; a failed reset closes the connection;
/// - broken: a connection whose last query failed with an IO, protocol or `FATAL` error is closed
///   on return, never handed out again;
/// - close: sqlx's graceful `Terminate`.
///
/// # Examples
///
/// ```no_run
/// use pool_postgres::{PgManager, PgPool};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool: PgPool = PgPool::builder(PgManager::from_url("postgres://postgres@localhost/app")?)
///     .name("main")
///     .build()?;
/// let mut conn = pool.acquire().await?;
/// let (n,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut *conn).await?;
/// # let _ = n;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgManager {
    options: PgConnectOptions,
    reset: ResetOnReturn,
}

impl PgManager {
    /// A manager opening connections with `options`.
    pub fn new(options: PgConnectOptions) -> Self {
        PgManager { options, reset: ResetOnReturn::Session }
    }

    /// A manager opening connections to `url` (`postgres://user:password@host:port/database?...`,
    /// with sqlx's query parameters).
    ///
    /// # Errors
    ///
    /// [`UrlError`] when the URL does not parse; it shows the URL with its password hidden.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let reason = "the scheme must be postgres:// or postgresql://";
            return Err(UrlError {
                url: redact(url),
                source: sqlx::Error::Configuration(reason.into()),
            });
        }
        PgConnectOptions::from_str(url)
            .map(PgManager::new)
            .map_err(|source| UrlError { url: redact(url), source: unwrapped(source) })
    }

    /// The connect options.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// What the pool clears on a returned connection before anyone else gets it
    /// \[[`ResetOnReturn::Session`]: the transaction and the session\].
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_postgres::{PgManager, ResetOnReturn};
    ///
    /// # fn f() -> Result<(), pool_postgres::UrlError> {
    /// // This application never changes the session: only roll back open transactions.
    /// let manager =
    ///     PgManager::from_url("postgres://app@db/app")?.reset_on_return(ResetOnReturn::Transaction);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn reset_on_return(mut self, reset: ResetOnReturn) -> Self {
        self.reset = reset;
        self
    }

    /// What [`reset_on_return`](Self::reset_on_return) is set to.
    pub fn resets_on_return(&self) -> ResetOnReturn {
        self.reset
    }
}

impl fmt::Debug for PgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the options' own `Debug`: it would print the password.
        f.debug_struct("PgManager")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("username", &self.options.get_username())
            .field("database", &self.options.get_database())
            .field("reset_on_return", &self.reset)
            .finish_non_exhaustive()
    }
}

impl Manager for PgManager {
    type Connection = PgConn;
    type Error = sqlx::Error;
    const BACKEND: &'static str = "postgresql";

    async fn connect(&self) -> Result<PgConn, sqlx::Error> {
        PgConnection::connect_with(&self.options).await.map(PgConn::new)
    }

    async fn check(&self, conn: &mut PgConn) -> Result<(), sqlx::Error> {
        conn.ping().await
    }

    fn needs_reset(&self, conn: &PgConn) -> bool {
        conn.needs_reset()
    }

    async fn reset(&self, conn: &mut PgConn) -> Result<(), sqlx::Error> {
        conn.reset(self.reset).await
    }

    fn is_broken(&self, conn: &PgConn) -> bool {
        conn.is_broken()
    }

    async fn close(&self, conn: PgConn) {
        conn.close().await;
    }
}

impl From<PgConnectOptions> for PgManager {
    fn from(options: PgConnectOptions) -> Self {
        PgManager::new(options)
    }
}

/// `e` without sqlx's configuration errors wrapped in one another, which would print "error
/// with configuration: error with configuration: invalid port number".
fn unwrapped(e: sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Configuration(inner) => match inner.downcast::<sqlx::Error>() {
            Ok(e) => unwrapped(*e),
            Err(inner) => sqlx::Error::Configuration(inner),
        },
        e => e,
    }
}

/// `url` with its passwords hidden (see [`pool_core::redact_url`]).
pub(crate) use pool_core::redact_url as redact;

#[cfg(test)]
mod tests {
    use super::PgManager;

    #[test]
    fn a_malformed_url_is_an_error_naming_it() {
        let err = PgManager::from_url("postgres://u:secret@h:notaport/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("postgres://u:***@h:notaport/db"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
        assert_eq!(msg.matches("error with configuration").count(), 1, "said once: {msg}");
        // sqlx wraps the error of a bad parameter in a second "error with configuration".
        for url in ["postgres://h/db?sslmode=bogus", "postgres://h/db?statement-cache-capacity=x"] {
            let msg = PgManager::from_url(url).unwrap_err().to_string();
            assert_eq!(msg.matches("error with configuration").count(), 1, "said once: {msg}");
        }
        let err = PgManager::from_url("host=db user=app password=hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PgManager::from_url("mysql://h/db").unwrap_err();
        assert!(err.to_string().starts_with("invalid PostgreSQL URL"), "{err}");
    }
}
