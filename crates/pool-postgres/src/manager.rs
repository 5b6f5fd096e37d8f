//! [`PgManager`]: opens, checks, resets and closes pooled [`PgConn`]s for `pool-core`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_core::future::BoxFuture;
use pool_core::{Credential, CredentialProvider, Manager};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError};
use sqlx::{AssertSqlSafe, Connection};

use crate::candidates::{self, Candidates, Target};
use crate::connection::{PgConn, ResetOnReturn};
use crate::error::{PgError, UrlError};
use crate::tls::{self, SslMode, Tls, TlsSettings};

/// An async function run on every new connection before the pool hands it out, and again after
/// each session reset ([`ResetOnReturn::Session`]) so that what it sets survives the reset: the
/// shape of sqlx's `PoolOptions::after_connect`.
///
/// ```
/// use pool_postgres::{ConnectHook, PgManager};
/// use std::sync::Arc;
///
/// # fn f() -> Result<(), pool_postgres::UrlError> {
/// let hook: ConnectHook = Arc::new(|conn| {
///     Box::pin(async move {
///         sqlx::query("SELECT set_config('search_path', 'app, public', false)")
///             .execute(conn)
///             .await?;
///         Ok(())
///     })
/// });
/// let manager = PgManager::from_url("postgres://app@db/app")?.after_connect(hook);
/// # Ok(()) }
/// ```
pub type ConnectHook = Arc<
    dyn for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> + Send + Sync,
>;

/// Opens `sqlx::PgConnection`s for a [`ConnectionPool`](pool_core::ConnectionPool), and checks
/// and resets them:
///
/// - connect: with TLS as [`SslMode`] and [`TlsSettings`] say, the password or token of the
///   [credential provider](Self::with_credentials) if there is one (a connect the server
///   refuses for authentication asks the provider once more, in case the credential rotated,
///   and tries again), then the [connect statements](Self::connect_statements) and the
///   [hook](Self::after_connect); a failure of either is a failed connect;
/// - check: a protocol-level `Sync` message answered by `ReadyForQuery` (sqlx's `ping`), the
///   cheapest real round trip to the server process; the pool bounds it with `connect_timeout`;
/// - reset on return: nothing after a ping or `SELECT`s of constants; after anything else,
///   one round trip in the background that rolls back a transaction the server reports open
///   and, by default, resets the session ([`ResetOnReturn`] names the exact statements), the
///   connect statements sent again in the same round trip and the hook run again after it; an
///   interrupted query is drained first; a failed reset closes the connection;
/// - broken: a connection whose last query failed with an IO, protocol or `FATAL` error, or
///   waited for the server past its [statement timeout](Self::statement_timeout)'s bound, is
///   closed on return, never handed out again, and so is one whose write was refused by a
///   standby (SQLSTATE 25006, found by the reset, see [`PgConn`]);
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
    tls: Tls,
    reset: ResetOnReturn,
    credentials: Option<Arc<dyn CredentialProvider>>,
    /// The connect statements, joined into one simple query.
    statements: Option<Arc<str>>,
    hook: Option<ConnectHook>,
    statement_timeout: Option<Duration>,
    /// The servers a connect may try, shared by clones (the last writable one is remembered).
    candidates: Arc<Candidates>,
    /// Writes that reached a read-only server (SQLSTATE 25006) on this manager's connections.
    read_only_errors: Arc<AtomicU64>,
}

impl PgManager {
    /// A manager opening connections with `options`.
    pub fn new(options: PgConnectOptions) -> Self {
        PgManager {
            tls: Tls::of_options(&options),
            options,
            reset: ResetOnReturn::Session,
            credentials: None,
            statements: None,
            hook: None,
            statement_timeout: None,
            candidates: Arc::new(Candidates::new(Vec::new(), Target::Any)),
            read_only_errors: Arc::default(),
        }
    }

    /// A manager opening connections to `url` (`postgres://user:password@host:port/database?...`,
    /// with sqlx's query parameters: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `host=/dir`
    /// for a Unix socket's directory, `options=-c name=value`...). libpq's environment variables
    /// (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGOPTIONS`, `PGPASSWORD`...)
    /// fill in what the URL leaves out, as in libpq.
    ///
    /// # Errors
    ///
    /// [`UrlError`] when the URL does not parse, or asks for `sslmode=allow`, which sqlx does not
    /// implement; it shows the URL with its password hidden.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        let refuse = |reason: String| UrlError {
            url: redact(url),
            source: sqlx::Error::Configuration(reason.into()),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(refuse("the scheme must be postgres:// or postgresql://".into()));
        }
        let split = candidates::split(url).map_err(refuse)?;
        let single = split.as_ref().map_or(url, |s| s.url.as_str());
        let options = PgConnectOptions::from_str(single)
            .map_err(|source| UrlError { url: redact(url), source: unwrapped(source) })?;
        if SslMode::of(options.get_ssl_mode()).is_none() {
            return Err(refuse(
                "sslmode=allow (in the URL or PGSSLMODE) is not supported: sqlx does not \
                 implement it; use prefer or disable"
                    .into(),
            ));
        }
        let tls = Tls::of_url(single, &options);
        let mut manager = PgManager { tls, ..PgManager::new(options) };
        if let Some(split) = split {
            let default_port = manager.options.get_port();
            let hosts =
                split.hosts.into_iter().map(|(h, p)| (h, p.unwrap_or(default_port))).collect();
            let target = split.target.unwrap_or(Target::Any);
            manager.candidates = Arc::new(Candidates::new(hosts, target));
        }
        Ok(manager)
    }

    /// Adds servers that a connect may reach instead, as libpq's multi-host URLs do, and
    /// accepts only a writable session (libpq's `target_session_attrs=read-write`): each
    /// connect tries the servers in turn, the last one found writable first, and keeps the
    /// first connection whose server is not in recovery (`pg_is_in_recovery()`) and has
    /// `transaction_read_only` off; it closes the others. So after a failover (the old primary
    /// gone, a standby promoted), new connections reach the new primary by themselves as the
    /// old ones break. Each candidate is a host and port; everything else (user, database,
    /// TLS, settings) is the manager's. A connect that finds no writable server fails with
    /// [`PgError::NoWritableServer`], naming each server and why.
    ///
    /// A server that never answers (frozen, its packets dropped) holds a connect until the
    /// pool's `connect_timeout`; the next connect starts with the server after it.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_postgres::PgManager;
    ///
    /// # fn f() -> Result<(), pool_postgres::UrlError> {
    /// // The same as `postgres://app@db-a:5432,db-b:5432/app?target_session_attrs=read-write`.
    /// let manager = PgManager::from_url("postgres://app@db-a/app")?.primaries([("db-b", 5432)]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn primaries<H: Into<String>>(
        mut self,
        others: impl IntoIterator<Item = (H, u16)>,
    ) -> Self {
        let mut hosts = self.candidates.hosts.clone();
        if hosts.is_empty() {
            let own = self.options.get_host().to_owned();
            hosts.push((own, self.options.get_port()));
        }
        for (host, port) in others {
            let host = host.into();
            if !hosts.iter().any(|(h, p)| *h == host && *p == port) {
                hosts.push((host, port));
            }
        }
        self.candidates = Arc::new(Candidates::new(hosts, Target::ReadWrite));
        self
    }

    /// Whether connects accept only a writable session ([`primaries`](Self::primaries), or
    /// `target_session_attrs=read-write` in the URL).
    pub fn read_write_only(&self) -> bool {
        self.candidates.target == Target::ReadWrite
    }

    /// The servers a connect may try, `host:port`, in order (the URL's own server alone for a
    /// URL with one host).
    pub fn servers(&self) -> Vec<String> {
        if self.candidates.hosts.is_empty() {
            return vec![self.server()];
        }
        self.candidates.hosts.iter().map(|(h, p)| host_port(h, *p)).collect()
    }

    /// The servers a connect may try, as `(host, port)`.
    pub(crate) fn hosts(&self) -> Vec<(String, u16)> {
        if self.candidates.hosts.is_empty() {
            return vec![(self.options.get_host().to_owned(), self.options.get_port())];
        }
        self.candidates.hosts.clone()
    }

    /// Writes that reached a standby (SQLSTATE 25006 on a server in recovery) on this
    /// manager's connections: each closed its connection.
    pub(crate) fn read_only_errors(&self) -> u64 {
        self.read_only_errors.load(Relaxed)
    }

    /// The connect options, as given (the credential provider's password and the settled
    /// `sslmode` are applied on each connect).
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// What the pool clears on a returned connection before anyone else gets it
    /// \[[`ResetOnReturn::Session`]\].
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

    /// TLS as `settings` say, each field it sets over what the URL and the environment said.
    ///
    /// Settled as libpq settles it on each connect: over a Unix socket no TLS is used (the
    /// server offers none there), and `require` with a root certificate checks the server's
    /// certificate as `verify-ca` does.
    #[must_use]
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.options = self.tls.apply(&settings, self.options);
        self
    }

    /// The `sslmode` asked for (from the settings, the URL, `PGSSLMODE`, else `prefer`).
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    /// What is known of the TLS the connections use.
    pub(crate) fn tls_state(&self) -> &Tls {
        &self.tls
    }

    /// Asks `provider` for the password (or token) of every new connection, in place of the
    /// URL's. Connections already open are not touched when it changes: they keep working
    /// until they are recycled. A connect that the server refuses for authentication
    /// (SQLSTATE 28P01 or 28000) tells the provider ([`CredentialProvider::refused`]) and, if
    /// it then gives another credential, tries once more with it.
    ///
    /// # Examples
    ///
    /// ```
    /// use pool_postgres::PgManager;
    /// use pool_postgres::pool_core::FileCredentials;
    ///
    /// # fn f() -> Result<(), pool_postgres::UrlError> {
    /// // The password Vault agent keeps current in a file.
    /// let manager = PgManager::from_url("postgres://app@db/app")?
    ///     .with_credentials(FileCredentials::new("/vault/secrets/db-password"));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_credentials(self, provider: impl CredentialProvider) -> Self {
        self.with_shared_credentials(Arc::new(provider))
    }

    /// [`with_credentials`](Self::with_credentials) with a provider shared by other pools.
    #[must_use]
    pub fn with_shared_credentials(mut self, provider: Arc<dyn CredentialProvider>) -> Self {
        self.credentials = Some(provider);
        self
    }

    /// The credential provider, if one was set.
    pub fn credentials(&self) -> Option<&Arc<dyn CredentialProvider>> {
        self.credentials.as_ref()
    }

    /// SQL statements run on every new connection, in order, as one simple query (`SET
    /// application_name = 'billing'`, `SET statement_timeout = '5s'`), before the
    /// [hook](Self::after_connect); sent again after each session reset, in the reset's own
    /// round trip, so what they set survives it at no extra cost. A statement that fails makes
    /// the connect fail with its error (and a reset that fails closes its connection).
    ///
    /// Statements prepared with SQL's `PREPARE` do not survive a reset (it deallocates them
    /// and the connection pays a second round trip each time): prepare through sqlx in the
    /// hook instead. Plain settings cost nothing on reset as
    /// [`server_settings`](Self::server_settings).
    #[must_use]
    pub fn connect_statements<S: Into<String>>(
        mut self,
        statements: impl IntoIterator<Item = S>,
    ) -> Self {
        let all: Vec<String> = statements
            .into_iter()
            .map(Into::into)
            .map(|s| s.trim().trim_end_matches(';').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        self.statements = (!all.is_empty()).then(|| Arc::from(all.join("; ")));
        self
    }

    /// Server settings sent in the startup packet (libpq's `options=-c name=value`, sqlx's
    /// [`PgConnectOptions::options`]): the session's defaults, which the session reset's
    /// `RESET ALL` returns to, so they survive it with no statement at all. For
    /// `application_name`, `search_path`, `statement_timeout`, `lock_timeout`...
    ///
    /// Some poolers in front of PostgreSQL refuse startup options (PgBouncer unless told to
    /// ignore them); use [`connect_statements`](Self::connect_statements) there.
    #[must_use]
    pub fn server_settings<K: fmt::Display, V: fmt::Display>(
        mut self,
        settings: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.options = self.options.options(settings);
        self
    }

    /// Bounds every statement on the server and every wait for it on the client \[`None`: no
    /// bound\].
    ///
    /// - The server: `statement_timeout` is sent in each connection's startup packet (as
    ///   [`server_settings`](Self::server_settings) would send it, in whole milliseconds, at most
    ///   PostgreSQL's 2147483647), so it is the session's default and survives the reset; the
    ///   server cancels a statement that runs longer (SQLSTATE 57014), and the connection stays
    ///   usable.
    /// - The client: a server that cannot enforce it (stopped, its host frozen, the network
    ///   silently dropping packets) would leave the query waiting until TCP gives up, which on a
    ///   host that still acknowledges packets is never. So each query through a pooled
    ///   [`PgConn`] waits for the server at most the timeout plus a grace for the server's own
    ///   error to arrive (the timeout again, at most one second: 1 s gives 2 s, 100 ms gives
    ///   200 ms); past that it fails with `sqlx::Error::Io` of kind
    ///   [`TimedOut`](std::io::ErrorKind::TimedOut) and the connection is closed (see
    ///   [`PgConn`]'s `# Bounds` for what the client bound covers).
    ///
    /// The pool bounds its own round trips (the check before a checkout, the reset on return,
    /// close) with `connect_timeout`, with or without this setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use pool_postgres::PgManager;
    ///
    /// # fn f() -> Result<(), pool_postgres::UrlError> {
    /// let manager =
    ///     PgManager::from_url("postgres://app@db/app")?.statement_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(manager.statement_bound(), Some(Duration::from_secs(6)));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        let timeout = timeout.filter(|t| !t.is_zero());
        if let Some(t) = timeout {
            let ms = t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
            self.options = self.options.options([("statement_timeout", format!("{ms}ms"))]);
        }
        self.statement_timeout = timeout;
        self
    }

    /// How long a query through this manager's connections may wait for the server: the
    /// [statement timeout](Self::statement_timeout) plus its grace; `None` without one.
    pub fn statement_bound(&self) -> Option<Duration> {
        self.statement_timeout.map(|t| t.saturating_add(t.min(STATEMENT_GRACE)))
    }

    /// Runs `hook` on every new connection, after the connect statements, and again after each
    /// session reset (see [`ConnectHook`]). A hook that fails makes the connect fail with its
    /// error; after a reset, it closes the connection.
    #[must_use]
    pub fn after_connect(mut self, hook: ConnectHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The options a connect to `server` (`None`: the options' own) uses: the credential's
    /// password, and the mode settled.
    fn connect_options(
        &self,
        credential: Option<&Credential>,
        server: Option<&(String, u16)>,
    ) -> PgConnectOptions {
        let mut options = self.options.clone().ssl_mode(self.tls.effective().into());
        if let Some((host, port)) = server {
            options = options.host(host).port(*port);
        }
        if let Some(credential) = credential {
            options = options.password(credential.expose());
        }
        options
    }

    /// Opens a connection to `server` with `credential` (sqlx's error, for
    /// [`explain`](Self::explain)).
    async fn open(
        &self,
        credential: Option<&Credential>,
        server: Option<&(String, u16)>,
    ) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.connect_options(credential, server)).await
    }

    /// Opens a connection to `server`, with the provider's credential if there is one.
    async fn open_one(&self, server: Option<&(String, u16)>) -> Result<PgConnection, PgError> {
        match &self.credentials {
            None => self.open(None, server).await.map_err(|e| self.explain(e)),
            Some(provider) => self.open_with(provider, server).await,
        }
    }

    /// Opens a connection to the first candidate that accepts the session asked for, the
    /// last one found so first.
    async fn open_candidate(&self) -> Result<PgConnection, PgError> {
        let candidates = &self.candidates;
        let n = candidates.len();
        let start = candidates.start();
        let mut refused = Vec::with_capacity(n);
        for k in 0..n {
            let i = (start + k) % n;
            let server = candidates.host(i);
            let name = server.map_or_else(|| self.server(), |(h, p)| host_port(h, *p));
            let mut conn = match self.open_one(server).await {
                Ok(conn) => conn,
                Err(e) => {
                    refused.push(format!("{name}: {e}"));
                    continue;
                }
            };
            if candidates.target == Target::ReadWrite {
                match candidates::not_writable(&mut conn).await {
                    Ok(None) => {}
                    Ok(Some(why)) => {
                        let _ = conn.close().await;
                        refused.push(format!("{name}: {why}"));
                        continue;
                    }
                    Err(e) => {
                        refused.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
            candidates.found(i);
            return Ok(conn);
        }
        Err(PgError::NoWritableServer { servers: refused.join("; ") })
    }

    fn explain(&self, error: sqlx::Error) -> PgError {
        match tls::explain(error, &self.tls, &self.options) {
            Ok(tls) => PgError::Tls(tls),
            Err(e) => PgError::Sqlx(e),
        }
    }

    fn server(&self) -> String {
        tls::server(&self.options)
    }

    /// Opens a connection with a credential from `provider`, asking once more after an
    /// authentication failure.
    async fn open_with(
        &self,
        provider: &Arc<dyn CredentialProvider>,
        server: Option<&(String, u16)>,
    ) -> Result<PgConnection, PgError> {
        let ask = || async {
            provider
                .credential()
                .await
                .map_err(|source| PgError::Credentials { server: self.server(), source })
        };
        let first = ask().await?;
        let refused = match self.open(Some(&first), server).await {
            Err(e) if is_auth_failure(&e) => e,
            result => return result.map_err(|e| self.explain(e)),
        };
        provider.refused(&first);
        let second = ask().await?;
        if second.secret() == first.secret() {
            return Err(self.explain(refused));
        }
        self.open(Some(&second), server).await.map_err(|e| {
            if is_auth_failure(&e) {
                provider.refused(&second);
            }
            self.explain(e)
        })
    }

    /// The connect statements, then the hook.
    async fn prepare(&self, conn: &mut PgConnection, statements: bool) -> Result<(), PgError> {
        let hook_failed = |source| PgError::Hook { server: self.server(), source };
        if let Some(sql) = self.statements.as_deref().filter(|_| statements) {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut *conn)
                .await
                .map_err(hook_failed)?;
        }
        if let Some(hook) = &self.hook {
            hook(conn).await.map_err(hook_failed)?;
        }
        Ok(())
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The most a query waits, past its connection's statement timeout, for the server's own
/// timeout error before the client gives up on the connection.
const STATEMENT_GRACE: Duration = Duration::from_secs(1);

/// Whether a connect failed because the server refused the credential: SQLSTATE 28P01
/// (`invalid_password`) or 28000 (`invalid_authorization_specification`, which some
/// token-based authentications report).
fn is_auth_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|e| matches!(e.code(), "28P01" | "28000")),
        _ => false,
    }
}

impl fmt::Debug for PgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the options' own `Debug`: it would print the password.
        f.debug_struct("PgManager")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("socket", &self.options.get_socket())
            .field("username", &self.options.get_username())
            .field("database", &self.options.get_database())
            .field("ssl_mode", &self.tls.mode)
            .field("credentials", &self.credentials)
            .field("connect_statements", &self.statements.is_some())
            .field("after_connect", &self.hook.is_some())
            .field("statement_timeout", &self.statement_timeout)
            .field("servers", &self.servers())
            .field("read_write_only", &self.read_write_only())
            .field("reset_on_return", &self.reset)
            .finish_non_exhaustive()
    }
}

impl Manager for PgManager {
    type Connection = PgConn;
    type Error = PgError;
    const BACKEND: &'static str = "postgresql";

    async fn connect(&self) -> Result<PgConn, PgError> {
        let bare = if self.candidates.is_plain() {
            self.open_one(None).await?
        } else {
            self.open_candidate().await?
        };
        let mut conn = PgConn::new(bare)
            .bounded(self.statement_bound())
            .counting(Arc::clone(&self.read_only_errors));
        if let Err(e) = self.prepare(conn.bare(), true).await {
            conn.close().await;
            return Err(e);
        }
        Ok(conn)
    }

    async fn check(&self, conn: &mut PgConn) -> Result<(), PgError> {
        Ok(conn.ping().await?)
    }

    fn needs_reset(&self, conn: &PgConn) -> bool {
        conn.needs_reset()
    }

    async fn reset(&self, conn: &mut PgConn) -> Result<(), PgError> {
        let session_reset = conn.reset(self.reset, self.statements.as_deref()).await?;
        if session_reset {
            // The statements ran in the reset's round trip; the hook runs after it.
            self.prepare(conn.bare(), false).await?;
        }
        Ok(())
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
    use crate::tls::{SslMode, TlsSettings};

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
        let err = PgManager::from_url("postgres://u:secret@h/db?sslmode=allow").unwrap_err();
        assert!(err.to_string().contains("sslmode=allow"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_url_with_several_hosts_makes_candidates_and_hides_its_password_in_errors() {
        let m = PgManager::from_url(
            "postgres://u:hunter2@a:5432,b:5433/db?target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(m.servers(), ["a:5432", "b:5433"]);
        assert!(m.read_write_only());
        assert_eq!((m.options().get_host(), m.options().get_database()), ("a", Some("db")));
        let m = PgManager::from_url("postgres://u@a/db").unwrap();
        assert!(!m.read_write_only());
        let m = m.primaries([("b", 5433), ("a", 5432)]);
        assert_eq!(m.servers(), ["a:5432", "b:5433"], "the URL's own first, each once");
        assert!(m.read_write_only());
        for url in [
            "postgres://u:hunter2@a,,b/db",
            "postgres://u:hunter2@a:x,b/db",
            "postgres://u:hunter2@a,b/db?target_session_attrs=standby",
        ] {
            let err = PgManager::from_url(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2") && err.contains("u:***@"), "{err}");
        }
    }

    #[test]
    fn debug_shows_no_password_from_the_url_or_the_provider() {
        let manager = PgManager::from_url("postgres://u:hunter2@h/db?sslmode=verify-full")
            .unwrap()
            .with_credentials(pool_core::StaticCredentials::password("s3cret-token"));
        let shown = format!("{manager:?}");
        assert!(shown.contains("ssl_mode: VerifyFull"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn settings_in_code_override_the_url_and_a_socket_turns_tls_off() {
        let manager = PgManager::from_url("postgres://h/db?sslmode=require&sslrootcert=/u.pem")
            .unwrap()
            .tls(TlsSettings::new().root_cert("/code.pem"));
        let tls = manager.tls_state();
        assert_eq!((tls.mode, tls.effective()), (SslMode::Require, SslMode::VerifyCa));
        let root = tls.file(crate::tls::Which::RootCert).unwrap();
        assert_eq!(root.value, "/code.pem");
        let manager =
            PgManager::from_url("postgres:///db?host=/run/postgresql&sslmode=verify-full").unwrap();
        assert_eq!(
            manager.options().get_socket().map(|p| p.to_str()),
            Some(Some("/run/postgresql"))
        );
        assert_eq!(
            (manager.ssl_mode(), manager.tls_state().effective()),
            (SslMode::VerifyFull, SslMode::Disable)
        );
    }
}
