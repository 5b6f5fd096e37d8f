//! [`PgConn`]: the pooled connection, a `sqlx::PgConnection` that knows, without IO, whether
//! its user ran anything that could leave state behind; and [`ResetOnReturn`], how the pool
//! clears that state before the next user gets the connection.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::postgres::{
    PgArguments, PgConnection, PgDatabaseError, PgQueryResult, PgRow, PgSeverity, PgStatement,
    PgTypeInfo,
};
use sqlx::{AssertSqlSafe, Connection, Either, Execute, Executor, FromRow, Postgres, SqlStr};
use sqlx_core::error::BoxDynError;
use sqlx_core::transaction::TransactionManager;

use crate::server::{ServerId, Sighting};
use crate::token::Lsn;

/// What the pool clears on a connection its user gave back, before anyone else gets it.
///
/// Whatever the mode, a connection whose user ran only `SELECT`s of constants (`SELECT 1`)
/// goes straight back: such a statement can neither open a transaction nor change the session.
/// After anything else (a query that reads a table or calls a function, an sqlx transaction, a
/// use of the bare `PgConnection`) the pool spends one round trip on return, in the
/// background, before the connection is handed out again. The server's own transaction status
/// (its `ReadyForQuery` message) decides whether a transaction is open, never the SQL text.
/// A reset that fails closes the connection.
///
/// The text form (`FromStr`, `Display`) is `session` or `transaction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum ResetOnReturn {
    /// The transaction and the session \[default\]: the next user gets the session as the
    /// server opened it. Sends, as one simple query:
    ///
    /// ```sql
    /// CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;
    /// DISCARD TEMP; DISCARD SEQUENCES; SELECT pg_advisory_unlock_all();
    /// EXECUTE pool_postgres_reset_check(<statements sqlx cached>);
    /// ```
    ///
    /// That is `DISCARD ALL` without its `DEALLOCATE ALL` and `DISCARD PLANS`, so sqlx's
    /// prepared statements survive, plus a check of the server's prepared statements
    /// (`pg_prepared_statement()`) against sqlx's statement cache, prepared once per
    /// connection (a `PREPARE` of it leads the first reset). A transaction left open (or
    /// aborted) gets `ROLLBACK` first; statements prepared with SQL's `PREPARE` get
    /// `DEALLOCATE`; if the user deallocated sqlx's own statements, sqlx's cache is emptied
    /// and `DEALLOCATE ALL` sent.
    ///
    /// So no connection carries from one user to the next: an open or aborted transaction,
    /// settings (`SET`, `set_config`, `SET SESSION CHARACTERISTICS`), a changed role or
    /// session authorization, temporary tables, views, functions and types, cursors
    /// (`WITH HOLD`), session advisory locks, prepared statements (but sqlx's and the reset's
    /// own `pool_postgres_reset_check`), `LISTEN`, or sequence state
    /// (`currval`, `lastval`), whether they were made by a statement, a function, a procedure,
    /// a `DO` block, inside an sqlx transaction or on the bare connection.
    ///
    /// Not reset (as with `DISCARD ALL`): libraries loaded with `LOAD`, connections that
    /// extensions keep (`dblink`, `postgres_fdw`), `random()`'s seed (`setseed`), and
    /// sqlx's client-side cache of custom type OIDs. Settings given at connect time (sqlx's
    /// connect options, such as `options=-c search_path=app`, or
    /// [`PgManager::server_settings`](crate::PgManager::server_settings)) are the session's
    /// starting point and stay; the manager's
    /// [connect statements](crate::PgManager::connect_statements) are sent again at the end of
    /// the same round trip, and its [hook](crate::PgManager::after_connect) run after it. A
    /// `statement_timeout` so short that the reset itself times out closes the connection.
    #[default]
    Session,
    /// Only the transaction: `ROLLBACK` when the server reports one open or aborted, found in
    /// the same round trip by an empty `SELECT`. Session state (settings, temporary tables,
    /// locks, prepared statements...) passes from one user to the next: for applications that
    /// never change the session, or change it on purpose for every user, and want the cheaper
    /// round trip.
    Transaction,
}

impl fmt::Display for ResetOnReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResetOnReturn::Session => "session",
            ResetOnReturn::Transaction => "transaction",
        })
    }
}

/// A text that is not `session` or `transaction`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reset on return {0:?}: expected \"session\" or \"transaction\"")]
pub struct ResetOnReturnError(pub String);

impl FromStr for ResetOnReturn {
    type Err = ResetOnReturnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "session" => Ok(ResetOnReturn::Session),
            "transaction" => Ok(ResetOnReturn::Transaction),
            _ => Err(ResetOnReturnError(s.to_owned())),
        }
    }
}

/// A pooled PostgreSQL connection: derefs to [`sqlx::PgConnection`], and is itself an sqlx
/// [`Executor`], so `sqlx::query("...").fetch_one(&mut *conn)` works on the pool's guard.
///
/// It notes, at the cost of one atomic flag per query and without any IO, what the pool must
/// know when the connection comes back:
/// - whether anything ran that could leave state behind: every statement except a `SELECT`
///   of constants (`SELECT 1`), an sqlx transaction ([`begin`](Self::begin)), and any
///   mutable use of the bare `PgConnection` (`&mut **conn`, or a function taking
///   `&mut PgConnection`), which the pool cannot watch; then [`ResetOnReturn`] applies;
/// - a query whose future or row stream was dropped before it finished, whose replies are
///   drained on return;
/// - an error that means the connection is gone (an IO, TLS or protocol error, or a `FATAL`
///   error from the server such as `pg_terminate_backend`): it is closed on return;
/// - a write refused as read-only: sqlx's database error with SQLSTATE 25006
///   (`read_only_sql_transaction`, "cannot execute INSERT in a read-only transaction") is
///   returned as it is, and the reset on return asks the server `pg_is_in_recovery()`: on a
///   standby the write is counted (a cluster's [`read_only_errors`](crate::ClusterStats)) and
///   the connection closed, so that the next connect finds the writable server; on a primary
///   (a transaction the user made read-only on purpose) the connection is reset and kept.
///
/// # Bounds
///
/// With a statement timeout ([`PgManager::statement_timeout`](crate::PgManager::statement_timeout)),
/// every query run through this type as an `Executor` (`&mut *conn`) waits for the server at
/// most [`bound`](Self::bound): the server's own `statement_timeout` plus a grace for its reply.
/// A query that waits longer (the server is frozen, its host or network gone quiet) fails with
/// `sqlx::Error::Io` of kind [`std::io::ErrorKind::TimedOut`], and the connection is marked
/// [broken](Self::is_broken): the pool closes it and never hands it out again. A row stream is
/// bounded per row: the wait for each next row, not the time the caller spends between rows.
/// What runs on the bare `PgConnection` (`&mut **conn`, and so sqlx transactions from
/// [`begin`](Self::begin)) has only the server's `statement_timeout`; the pool's reset after it
/// is bounded by `connect_timeout`.
pub struct PgConn {
    inner: PgConnection,
    flags: Arc<Flags>,
    /// How long a query may wait for the server before it fails and breaks the connection.
    bound: Option<Duration>,
    /// The server this connection reached and how far it had replayed, when the cluster asked
    /// ([`crate::server::sight`]).
    seen: Option<(ServerId, Option<Lsn>)>,
    /// Whether the session reset's check ([`CHECK`]) is prepared on the server.
    check_prepared: bool,
}

impl PgConn {
    pub(crate) fn new(inner: PgConnection) -> Self {
        PgConn { inner, flags: Arc::default(), bound: None, seen: None, check_prepared: false }
    }

    /// This connection with every query bounded by `bound` (see the type's `# Bounds`).
    pub(crate) fn bounded(mut self, bound: Option<Duration>) -> Self {
        self.bound = bound;
        self
    }

    /// This connection with its writes refused as read-only counted in `counter`.
    pub(crate) fn counting(mut self, counter: Arc<AtomicU64>) -> Self {
        let bits = self.flags.bits.load(Ordering::Relaxed);
        self.flags = Arc::new(Flags { bits: AtomicU8::new(bits), read_only_errors: counter });
        self
    }

    /// How long a query through this connection may wait for the server before it fails with
    /// a timeout and the connection is closed; `None` without a statement timeout.
    pub fn bound(&self) -> Option<Duration> {
        self.bound
    }

    /// Takes the bare sqlx connection out.
    pub fn into_inner(self) -> PgConnection {
        self.inner
    }

    /// Whether a query run through this connection failed in a way that means the connection is
    /// gone (see the type's docs).
    pub fn is_broken(&self) -> bool {
        self.flags.get(BROKEN)
    }

    /// Starts an sqlx transaction, as [`Connection::begin`] does on the bare connection
    /// (`conn.begin()` on the pool's guard resolves here). Its `BEGIN` waits for the server at
    /// most [`bound`](Self::bound); the statements in the transaction run on the bare
    /// connection, with the server's `statement_timeout` alone (see `# Bounds`).
    ///
    /// # Errors
    ///
    /// The connection's error, or the bound's timeout (see `# Bounds`).
    pub async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        self.flags.set(USED);
        let flags = Arc::clone(&self.flags);
        let result = bounded(self.bound, &flags, Connection::begin(&mut self.inner)).await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    /// Checks that the connection is alive: a protocol `Sync` answered by `ReadyForQuery`
    /// (sqlx's [`ping`](Connection::ping)), which changes nothing and so needs no reset.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn ping(&mut self) -> Result<(), sqlx::Error> {
        let result = self.inner.ping().await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    /// Runs one of this crate's own read-only queries (`pg_last_wal_replay_lsn()`, which can
    /// neither open a transaction nor change the session) without counting it as a use.
    pub(crate) async fn fetch_own<T>(&mut self, sql: &'static str) -> Result<T, sqlx::Error>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.flags.set(BUSY);
        let result = sqlx::query_as(sql).fetch_one(&mut self.inner).await;
        self.flags.finished(result.as_ref().err());
        result
    }

    /// Remembers what [`crate::server::sight`] found on this connection.
    pub(crate) fn saw(&mut self, seen: &Sighting) {
        self.seen = Some((seen.server.clone(), seen.replay));
    }

    /// The server this connection reached, once asked.
    pub(crate) fn server(&self) -> Option<&ServerId> {
        self.seen.as_ref().map(|(server, _)| server)
    }

    /// How far this connection's server had replayed when last asked: the position only grows
    /// for as long as the connection lives, since the connection stays on its server.
    pub(crate) fn replayed(&self) -> Option<Lsn> {
        self.seen.as_ref().and_then(|(_, replay)| *replay)
    }

    /// Whether the pool must do anything before anyone else gets this connection: something
    /// that may have left state ran, a query is unfinished, or sqlx holds commands it has not
    /// sent yet (a dropped transaction's `ROLLBACK`).
    pub(crate) fn needs_reset(&self) -> bool {
        self.flags.get(USED | BUSY | READ_ONLY)
            || self.inner.should_flush()
            || self.inner.is_in_transaction()
    }

    /// The bare connection, for the pool's own statements (the connect statements and hook),
    /// which set the session's starting point and so do not count as a use.
    pub(crate) fn bare(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    /// Clears what [`needs_reset`](Self::needs_reset) reported (see [`ResetOnReturn`]), with
    /// `then` (the connect statements) sent after a session reset in its round trip. Says
    /// whether the session was reset.
    pub(crate) async fn reset(
        &mut self,
        mode: ResetOnReturn,
        then: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let result = self.reset_inner(mode, then).await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    async fn reset_inner(
        &mut self,
        mode: ResetOnReturn,
        then: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        // sqlx's own transactions still open (a `Transaction` forgotten rather than dropped):
        // their rollbacks are queued level by level, so sqlx's count is right again. The
        // user may have ended them already with a raw statement, so their errors do not
        // matter: the server's status, read below, does.
        while self.inner.is_in_transaction() {
            <Postgres as sqlx::Database>::TransactionManager::start_rollback(&mut self.inner);
        }
        if self.flags.get(BUSY) || self.inner.should_flush() {
            self.drain().await?;
            self.flags.clear(BUSY);
        }
        if self.flags.get(READ_ONLY) {
            // The transaction the refusal aborted is rolled back first, or the question fails.
            if self.flags.get(USED) {
                self.clean(ResetOnReturn::Transaction, None).await?;
            }
            self.flags.clear(READ_ONLY);
            let sql = "SELECT pg_catalog.pg_is_in_recovery()";
            if sqlx::query_scalar::<_, bool>(sql).fetch_one(&mut self.inner).await? {
                self.flags.read_only_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "a write reached a standby (SQLSTATE 25006): its connection is closed"
                );
                return Err(sqlx::Error::Protocol(
                    "a write reached a standby in recovery (SQLSTATE 25006): the connection is \
                     closed, so that the next connect finds the writable server"
                        .into(),
                ));
            }
        }
        if self.flags.get(USED) {
            self.clean(mode, then).await?;
            self.flags.clear(USED);
            return Ok(mode == ResetOnReturn::Session);
        }
        Ok(false)
    }

    /// Reads every reply still owed (an abandoned query's, a queued `ROLLBACK`'s). sqlx stops
    /// reading at an error reply and leaves the rest for the next read, so each error an
    /// abandoned query still had to report costs one more round.
    async fn drain(&mut self) -> Result<(), sqlx::Error> {
        let mut last = None;
        for _ in 0..DRAIN_ROUNDS {
            match self.inner.ping().await {
                Ok(()) => return Ok(()),
                Err(e @ sqlx::Error::Database(_)) if !is_fatal(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| sqlx::Error::Protocol("replies still owed".into())))
    }

    /// Resets the session (or only the transaction) in one round trip when nothing is left
    /// open, and learns the server's transaction status from the same reply.
    ///
    /// sqlx keeps the transaction status of `ReadyForQuery` private; its one public reader is
    /// [`Connection::begin_with`], which runs a statement and then fails with
    /// [`sqlx::Error::BeginFailed`] unless the server reports a transaction block. So the
    /// reset itself goes through it: `BeginFailed` means the server is idle and the reset ran;
    /// a transaction means the user left one open (the reset ran inside it and is rolled back
    /// with it, then run again); SQLSTATE 25P02 means an aborted one. Each outcome is the
    /// server's word, whatever path the user's statements took.
    async fn clean(&mut self, mode: ResetOnReturn, then: Option<&str>) -> Result<(), sqlx::Error> {
        let mut last = None;
        for _ in 0..CLEAN_ROUNDS {
            let sql = match mode {
                ResetOnReturn::Session => {
                    let mut sql =
                        session_reset(self.inner.cached_statements_size(), !self.check_prepared);
                    if let Some(then) = then {
                        sql.push_str("; ");
                        sql.push_str(then);
                    }
                    sql
                }
                ResetOnReturn::Transaction => "SELECT".to_owned(),
            };
            let failed = match Connection::begin_with(&mut self.inner, AssertSqlSafe(sql)).await {
                Ok(open) => {
                    // The reset ran inside the transaction (and prepared its check, which a
                    // rollback does not undo).
                    self.check_prepared |= mode == ResetOnReturn::Session;
                    open.rollback().await?;
                    continue;
                }
                Err(e) => e,
            };
            let session = mode == ResetOnReturn::Session;
            match failed {
                sqlx::Error::BeginFailed => {
                    self.check_prepared |= session;
                    return Ok(());
                }
                // The check is prepared already (by an earlier reset that then failed), or the
                // user deallocated it.
                sqlx::Error::Database(e) if session && e.code().as_deref() == Some("42P05") => {
                    self.check_prepared = true;
                }
                sqlx::Error::Database(e) if session && e.code().as_deref() == Some("26000") => {
                    self.check_prepared = false;
                }
                sqlx::Error::Database(e) if e.code().as_deref() == Some("25P02") => {
                    sqlx::raw_sql("ROLLBACK").execute(&mut self.inner).await?;
                }
                sqlx::Error::Database(e) if session && e.code().as_deref() == Some(OUT_OF_STEP) => {
                    match self.deallocate().await {
                        // The reset ran inside a transaction the user left open, and its
                        // error aborted it.
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P02") => {
                            sqlx::raw_sql("ROLLBACK").execute(&mut self.inner).await?;
                        }
                        result => result?,
                    }
                }
                // Another error was owed to an earlier statement (sqlx stops reading at the
                // first error reply): read what is left, then reset again.
                e @ sqlx::Error::Database(_) if !is_fatal(&e) => {
                    self.drain().await?;
                    last = Some(e);
                }
                e => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            sqlx::Error::Protocol(format!("the session was not clean after {CLEAN_ROUNDS} resets"))
        }))
    }

    /// Deallocates the statements prepared with SQL's `PREPARE`, keeping sqlx's and the
    /// reset's own check, or all of them (sqlx's cache emptied) when the server no longer has
    /// every statement sqlx cached.
    async fn deallocate(&mut self) -> Result<(), sqlx::Error> {
        let sql = "SELECT name, from_sql FROM pg_catalog.pg_prepared_statements";
        let statements: Vec<(String, bool)> =
            sqlx::query_as(sql).persistent(false).fetch_all(&mut self.inner).await?;
        let sqlx_own = statements.iter().filter(|(_, from_sql)| !from_sql).count();
        if sqlx_own != self.inner.cached_statements_size() {
            self.inner.clear_cached_statements().await?;
            sqlx::raw_sql("DEALLOCATE ALL").execute(&mut self.inner).await?;
            self.check_prepared = false;
            return Ok(());
        }
        let mut sql = String::new();
        for (name, _) in statements.iter().filter(|(name, from_sql)| *from_sql && name != CHECK) {
            sql.push_str(&format!("DEALLOCATE \"{}\";", name.replace('"', "\"\"")));
        }
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut self.inner).await?;
        Ok(())
    }

    pub(crate) async fn close(self) {
        let _ = self.inner.close().await;
    }
}

/// How many error replies an abandoned query may still owe before the pool gives up on
/// draining it and closes the connection.
const DRAIN_ROUNDS: usize = 8;

/// How many resets may find something new to clear (an open transaction, then prepared
/// statements) before the pool gives up and closes the connection.
const CLEAN_ROUNDS: usize = 4;

/// [`ResetOnReturn::Session`]'s statements, for a connection whose sqlx statement cache holds
/// `cached` statements; with `prepare`, the check they end with is prepared first.
fn session_reset(cached: usize, prepare: bool) -> String {
    let prepare = if prepare { CHECK_PREPARE } else { "" };
    format!(
        "{prepare}CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
         DISCARD TEMP; DISCARD SEQUENCES; SELECT pg_catalog.pg_advisory_unlock_all(); \
         EXECUTE {CHECK}({cached})"
    )
}

/// The name of the session reset's own prepared statement, the one statement prepared with
/// SQL's `PREPARE` that the reset keeps, as sqlx keeps its own: it checks the server's prepared
/// statements against sqlx's statement cache. Prepared once per connection, it runs with a plan
/// made once; planned afresh on every return it cost more than the rest of the reset.
const CHECK: &str = "pool_postgres_reset_check";

/// Prepares [`CHECK`]: it divides by zero ([`OUT_OF_STEP`]) when the server holds a statement
/// prepared with SQL's `PREPARE` (other than itself), or not exactly `$1` of the protocol's, which
/// are sqlx's.
const CHECK_PREPARE: &str = "PREPARE pool_postgres_reset_check (pg_catalog.int8) AS \
     SELECT 1 / (count(*) FILTER (WHERE NOT from_sql) = $1 \
       AND count(*) FILTER (WHERE from_sql AND name <> 'pool_postgres_reset_check') = 0)::pg_catalog.int4 \
     FROM pg_catalog.pg_prepared_statement(); ";

/// The SQLSTATE of [`CHECK`]'s signal that prepared statements are out of step (division by
/// zero, which nothing else in the reset can raise).
const OUT_OF_STEP: &str = "22012";

impl Deref for PgConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        // Whatever runs on the bare connection is not watched (see the type's docs).
        self.flags.set(USED);
        &mut self.inner
    }
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("used", &self.flags.get(USED))
            .field("busy", &self.flags.get(BUSY))
            .field("broken", &self.flags.get(BROKEN))
            .finish_non_exhaustive()
    }
}

impl<'c> Executor<'c> for &'c mut PgConn {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let flags = Arc::clone(&self.flags);
        flags.set(BUSY);
        let query = Sniff { inner: query, flags: Arc::clone(&flags) };
        let bound = self.bound;
        let stream = self.inner.fetch_many(query);
        Box::pin(Watched { stream, flags, bound, waiting: None, expired: false })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let flags = Arc::clone(&self.flags);
        flags.set(BUSY);
        let query = Sniff { inner: query, flags: Arc::clone(&flags) };
        let bound = self.bound;
        let fut = self.inner.fetch_optional(query);
        Box::pin(async move {
            let result = bounded(bound, &flags, fut).await;
            flags.finished(result.as_ref().err());
            result
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        // Preparing runs nothing, so it cannot change the session.
        let flags = Arc::clone(&self.flags);
        flags.set(BUSY);
        let bound = self.bound;
        let fut = self.inner.prepare_with(sql, parameters);
        Box::pin(async move {
            let result = bounded(bound, &flags, fut).await;
            flags.finished(result.as_ref().err());
            result
        })
    }

    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.inner.describe(sql)
    }
}

/// Something ran that may have left state in the session or a transaction open.
const USED: u8 = 1;
/// A query started and has not finished yet (or its future was dropped).
const BUSY: u8 = 2;
/// A query failed in a way that means the connection is gone.
const BROKEN: u8 = 4;
/// A statement was refused as a write on a read-only server (SQLSTATE 25006).
const READ_ONLY: u8 = 8;

#[derive(Debug, Default)]
struct Flags {
    bits: AtomicU8,
    /// Where writes refused as read-only are counted (the manager's counter).
    read_only_errors: Arc<AtomicU64>,
}

impl Flags {
    fn get(&self, bits: u8) -> bool {
        self.bits.load(Ordering::Relaxed) & bits != 0
    }

    fn set(&self, bits: u8) {
        self.bits.fetch_or(bits, Ordering::Relaxed);
    }

    fn clear(&self, bits: u8) {
        self.bits.fetch_and(!bits, Ordering::Relaxed);
    }

    /// A query finished, with `error` if it failed.
    fn finished(&self, error: Option<&sqlx::Error>) {
        self.clear(BUSY);
        if let Some(e) = error {
            self.note_error(e);
        }
    }

    fn note_error(&self, error: &sqlx::Error) {
        if is_fatal(error) {
            self.set(BROKEN);
        } else if is_read_only(error) {
            // Whether the server is a standby is asked by the reset on return.
            self.set(READ_ONLY);
        }
    }
}

/// `fut` bounded by `bound`: past it, the connection is marked broken and the query fails
/// with [`timed_out`].
async fn bounded<T>(
    bound: Option<Duration>,
    flags: &Flags,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let Some(bound) = bound else { return fut.await };
    match tokio::time::timeout(bound, fut).await {
        Ok(result) => result,
        Err(_) => {
            flags.set(BROKEN);
            Err(timed_out(bound))
        }
    }
}

/// The error of a query that waited for the server longer than its connection's bound.
fn timed_out(bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no reply from the server within {bound:?} (its statement_timeout and a grace): \
             the server may be frozen or unreachable; the connection is closed"
        ),
    ))
}

/// Whether a statement failed because the server is read-only: SQLSTATE 25006,
/// `read_only_sql_transaction`.
fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// Whether an error means the connection can no longer be used.
fn is_fatal(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|e| matches!(e.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// Whether `sql` is one `SELECT` of constants: numbers, strings, `NULL`, `TRUE`, `FALSE`, each
/// with an optional alias (`SELECT 1`, `SELECT 'ok' AS status, NULL`). Such a statement calls
/// no function, reads no table and takes no parameter, so nothing the server runs for it can
/// open a transaction or change the session. Any other text may, through a function, a
/// trigger, a view, a rule, an operator or a domain that the text does not show, so it counts
/// as a use.
fn is_inert(sql: &str) -> bool {
    let b = sql.trim().trim_end_matches(';').trim_end().as_bytes();
    let Some(rest) = b.get(..6).filter(|w| w.eq_ignore_ascii_case(b"select")).map(|_| &b[6..])
    else {
        return false;
    };
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return false;
    }
    let word = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
    let mut i = 0;
    loop {
        // One constant.
        while rest.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match rest.get(i) {
            Some(b'0'..=b'9') => {
                i += rest[i..].iter().take_while(|c| c.is_ascii_digit() || **c == b'.').count();
            }
            Some(b'\'') => {
                // A plain string; `''` stands for a quote.
                i += 1;
                loop {
                    match (rest.get(i), rest.get(i + 1)) {
                        (Some(b'\''), Some(b'\'')) => i += 2,
                        (Some(b'\''), _) => break i += 1,
                        (Some(_), _) => i += 1,
                        (None, _) => return false,
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let n = word(&rest[i..]);
                let constant = &rest[i..i + n];
                if !["null", "true", "false"]
                    .iter()
                    .any(|k| constant.eq_ignore_ascii_case(k.as_bytes()))
                {
                    return false;
                }
                i += n;
            }
            _ => return false,
        }
        // An optional alias (`AS x` or `x`), then a comma or the end.
        let mut aliased = false;
        loop {
            while rest.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            match rest.get(i) {
                None => return true,
                Some(b',') => break i += 1,
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let n = word(&rest[i..]);
                    let is_as = rest[i..i + n].eq_ignore_ascii_case(b"as");
                    if aliased {
                        return false;
                    }
                    aliased = !is_as;
                    i += n;
                }
                _ => return false,
            }
        }
    }
}

/// A query wrapper that reads the SQL on its way to the server.
struct Sniff<E> {
    inner: E,
    flags: Arc<Flags>,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Sniff<E> {
    fn sql(self) -> SqlStr {
        let sql = self.inner.sql();
        if !is_inert(sql.as_str()) {
            self.flags.set(USED);
        }
        sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.inner.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.inner.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// A result stream that marks the connection done when it ends and broken on a fatal error,
/// and fails when the server leaves it waiting for a row longer than `bound`.
struct Watched<'e> {
    stream: BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>,
    flags: Arc<Flags>,
    bound: Option<Duration>,
    /// While the stream waits for the server: when that wait exceeds `bound`.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait exceeded `bound`: the stream ended with the timeout.
    expired: bool,
}

impl Stream for Watched<'_> {
    type Item = Result<Either<PgQueryResult, PgRow>, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        let polled = self.stream.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => self.flags.finished(None),
            Poll::Ready(Some(Err(e))) => self.flags.note_error(e),
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Pending => {
                // The wait starts now, not when the caller last took a row.
                let Some(bound) = self.bound else { return Poll::Pending };
                let timer = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.expired = true;
                    self.flags.set(BROKEN);
                    return Poll::Ready(Some(Err(timed_out(bound))));
                }
                return Poll::Pending;
            }
        }
        self.waiting = None;
        polled
    }
}

#[cfg(test)]
mod tests;
