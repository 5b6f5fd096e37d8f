//! [`PgConn`]: the pooled connection, a `sqlx::PgConnection` that remembers, without IO, whether
//! its user left it inside a transaction, in the middle of a query, or broken.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::postgres::{
    PgArguments, PgConnection, PgDatabaseError, PgQueryResult, PgRow, PgSeverity, PgStatement,
    PgTypeInfo,
};
use sqlx::{Connection, Either, Execute, Executor, Postgres, SqlStr};
use sqlx_core::error::BoxDynError;
use sqlx_core::transaction::TransactionManager;

/// A pooled PostgreSQL connection: derefs to [`sqlx::PgConnection`], and is itself an sqlx
/// [`Executor`], so `sqlx::query("...").fetch_one(&mut *conn)` works on the pool's guard.
///
/// Queries run through this executor are watched, at the cost of one atomic flag per query, so
/// that the pool learns without any IO what the user left behind:
/// - a transaction opened with a raw `BEGIN` or `START TRANSACTION` and not closed by a later
///   `COMMIT`, `ROLLBACK`, `END` or `ABORT` (sqlx's own [`Transaction`](sqlx::Transaction)s are
///   tracked by sqlx itself);
/// - a query whose future or row stream was dropped before it finished;
/// - a statement that changes the session beyond its transaction (`SET`, `LISTEN`, a temporary
///   table, a session advisory lock, a named `PREPARE`, `DISCARD`...), cleared on return with
///   `DISCARD ALL` (sqlx's statement cache emptied first);
/// - an error that means the connection is gone (an IO, TLS or protocol error, or a `FATAL`
///   error from the server such as `pg_terminate_backend`).
///
/// Statements run through `&mut **conn` (the bare `PgConnection`, as a function taking
/// `&mut PgConnection` gets it) bypass the watch: the pool cannot see a raw `BEGIN` or a query
/// dropped mid-response sent that way. So whenever the bare connection was borrowed mutably,
/// [`PgManager::check_bare_transactions`](crate::PgManager::check_bare_transactions) (on by
/// default) costs one round trip on return: it drains the connection and asks the server.
pub struct PgConn {
    inner: PgConnection,
    flags: Arc<Flags>,
}

impl PgConn {
    pub(crate) fn new(inner: PgConnection) -> Self {
        PgConn { inner, flags: Arc::default() }
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

    /// Starts an sqlx transaction, as [`Connection::begin`] does on the bare connection, but
    /// without counting as a bare use: sqlx tracks its own transactions, so the pool knows
    /// without a round trip whether one was left open (`conn.begin()` on the pool's guard
    /// resolves here).
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        let result = Connection::begin(&mut self.inner).await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    /// Checks that the connection is alive: a protocol `Sync` answered by `ReadyForQuery`
    /// (sqlx's [`ping`](Connection::ping)), without counting as a use of the bare connection.
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

    /// Whether the pool must clear state before anyone else gets this connection: an open raw
    /// or sqlx transaction, an unfinished query, commands sqlx queued but has not sent yet (a
    /// dropped transaction's `ROLLBACK`), a changed session; with `check_bare`, also a use of
    /// the bare connection, which only the server can tell about.
    pub(crate) fn needs_reset(&self, check_bare: bool) -> bool {
        self.flags.get(RAW_TX | BUSY | SESSION)
            || (check_bare && self.flags.get(BARE))
            || self.inner.is_in_transaction()
            || self.inner.should_flush()
    }

    /// Clears what [`needs_reset`](Self::needs_reset) reported: drains an unfinished query and
    /// sends queued commands (one `Sync` round trip), rolls back sqlx transactions (`ROLLBACK`
    /// or `ROLLBACK TO SAVEPOINT` per level) and a raw transaction (`ROLLBACK`), and resets a
    /// changed session (`DISCARD ALL`).
    pub(crate) async fn reset(&mut self, check_bare: bool) -> Result<(), sqlx::Error> {
        let result = self.reset_inner(check_bare).await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    async fn reset_inner(&mut self, check_bare: bool) -> Result<(), sqlx::Error> {
        if self.flags.get(BUSY) || self.inner.should_flush() {
            self.inner.ping().await?;
            self.flags.clear(BUSY);
        }
        while self.inner.is_in_transaction() {
            <Postgres as sqlx::Database>::TransactionManager::rollback(&mut self.inner).await?;
        }
        if check_bare
            && self.flags.get(BARE)
            && !self.flags.get(RAW_TX)
            && self.bare_tx_open().await?
        {
            self.flags.set(RAW_TX);
        }
        if self.flags.get(RAW_TX) {
            self.inner.execute("ROLLBACK").await?;
            self.flags.clear(RAW_TX);
        }
        if self.flags.get(SESSION) {
            // sqlx's cached statements go first (closing one `DISCARD ALL` or `DEALLOCATE`
            // already removed is no error), then the session's state, outside any transaction.
            self.inner.clear_cached_statements().await?;
            sqlx::raw_sql("DISCARD ALL").execute(&mut self.inner).await?;
            self.flags.clear(SESSION);
        }
        self.flags.clear(BARE);
        Ok(())
    }

    /// Asks the server whether a transaction is open, after waiting out anything a bare use
    /// left in flight (sqlx reads every pending reply before it sends a query, so a query whose
    /// future was dropped mid-response is drained first).
    ///
    /// Outside a transaction each statement starts its own, so the two times are equal; inside
    /// one opened by an earlier statement they differ. It goes as a simple query: in the
    /// extended protocol each message (Parse, Bind, Execute) moves the statement time, which
    /// would make the two differ every time. In an aborted transaction the query fails with
    /// SQLSTATE 25P02.
    async fn bare_tx_open(&mut self) -> Result<bool, sqlx::Error> {
        let sql = "SELECT pg_catalog.statement_timestamp() <> pg_catalog.transaction_timestamp()";
        match sqlx::raw_sql(sql).fetch_one(&mut self.inner).await {
            Ok(row) => sqlx::Row::try_get::<bool, _>(&row, 0),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P02") => Ok(true),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.inner.close().await;
    }
}

impl Deref for PgConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        // Whatever runs on the bare connection is not watched (see the type's docs).
        self.flags.set(BARE);
        &mut self.inner
    }
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("raw_transaction", &self.flags.get(RAW_TX))
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
        Box::pin(Watched { stream: self.inner.fetch_many(query), flags })
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
        let fut = self.inner.fetch_optional(query);
        Box::pin(async move {
            let result = fut.await;
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
        let flags = Arc::clone(&self.flags);
        flags.set(BUSY);
        let fut = self.inner.prepare_with(sql, parameters);
        Box::pin(async move {
            let result = fut.await;
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

/// The connection opened a raw transaction.
const RAW_TX: u8 = 1;
/// A query started and has not finished yet (or its future was dropped).
const BUSY: u8 = 2;
/// A query failed in a way that means the connection is gone.
const BROKEN: u8 = 4;
/// The last query's text had a transaction control statement.
const TX_CONTROL: u8 = 8;
/// The bare `PgConnection` was borrowed mutably since the last reset.
const BARE: u8 = 16;
/// A statement changed the session (`SET`, `LISTEN`, a temporary table, a session advisory
/// lock, a named prepared statement...): the next user must not inherit it.
const SESSION: u8 = 32;
/// The running query's text ends the raw transaction: [`RAW_TX`] clears once it succeeds (a
/// `COMMIT` whose future is dropped before it is sent ends nothing).
const TX_END: u8 = 64;

#[derive(Debug, Default)]
struct Flags(AtomicU8);

impl Flags {
    fn get(&self, bits: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bits != 0
    }

    fn set(&self, bits: u8) {
        self.0.fetch_or(bits, Ordering::Relaxed);
    }

    fn clear(&self, bits: u8) {
        self.0.fetch_and(!bits, Ordering::Relaxed);
    }

    /// A query finished, with `error` if it failed.
    fn finished(&self, error: Option<&sqlx::Error>) {
        self.clear(BUSY);
        match error {
            None if self.get(TX_END) => self.clear(RAW_TX | TX_END),
            None => {}
            Some(e) => self.note_error(e),
        }
    }

    fn note_error(&self, error: &sqlx::Error) {
        // A text that failed ended no transaction, whatever it said (the stream's end, which
        // follows its error, must not clear the flag).
        self.clear(TX_END);
        if is_fatal(error) {
            self.set(BROKEN);
        } else if matches!(error, sqlx::Error::Database(_)) && self.get(TX_CONTROL) {
            // The server skips what follows an error in the same text (`BEGIN; SELECT 1/0;
            // COMMIT` leaves an aborted transaction open), and a failed end statement may end
            // nothing: one `ROLLBACK` on return settles it.
            self.set(RAW_TX);
        }
    }

    /// Updates the raw transaction flag from the statements of `sql`.
    fn track(&self, sql: &str) {
        let (effect, session) = classify(sql);
        match effect {
            Some(true) => {
                self.set(RAW_TX);
                self.clear(TX_END);
            }
            Some(false) => self.set(TX_END),
            None => self.clear(TX_END),
        }
        if effect.is_some() {
            self.set(TX_CONTROL);
        } else {
            self.clear(TX_CONTROL);
        }
        if session {
            self.set(SESSION);
        }
    }
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

/// What the statements of `sql` leave behind, split once for both answers. First, `Some(true)`
/// when the last transaction control statement opens a transaction (`BEGIN`, `START
/// TRANSACTION`, `COMMIT AND CHAIN`), `Some(false)` when it ends one (`COMMIT`, `END`,
/// `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`), `None` when there is none.
///
/// The text is split into statements as PostgreSQL's lexer would: a `;` inside a string, a
/// quoted identifier, a dollar-quoted body or a comment separates nothing, and the statements
/// of a `BEGIN ATOMIC ... END` function body are not transaction control. So in
/// `BEGIN; DO $$ BEGIN ...; END $$` the `END` inside the body is not taken for the end of the
/// transaction. Text it cannot read (an unterminated quote) may hide anything, so it never
/// counts as ending one: a false "opens" costs one `ROLLBACK` on return, a false "ends" would
/// hand the next user an open transaction. (It reads strings as `standard_conforming_strings`
/// has them, on by default since PostgreSQL 9.1: with it off, a `\'` inside a plain string
/// would be misread.) A text with transaction control that fails on the server counts as
/// opening one, since the server skips what follows the error.
///
/// Second, whether they change the session beyond their transaction (see
/// [`session_statement`] and [`calls_session_functions`]).
fn classify(sql: &str) -> (Option<bool>, bool) {
    let calls = calls_session_functions(sql);
    // Most queries are one statement without quotes or comments: read it in place, unsplit.
    if !sql.contains([';', '-', '/', '\'', '"', '$']) {
        return (effect_of(std::iter::once(sql), true), calls || session_statement(sql));
    }
    let (statements, complete) = statements(sql);
    let effect = effect_of(statements.iter().map(String::as_str), complete);
    (effect, calls || statements.iter().any(|s| session_statement(s)))
}

#[cfg(test)]
fn transaction_effect(sql: &str) -> Option<bool> {
    classify(sql).0
}

#[cfg(test)]
fn changes_session(sql: &str) -> bool {
    classify(sql).1
}

/// Whether one statement may leave state in the session beyond its transaction, which
/// `DISCARD ALL` clears: a `SET` (not `SET LOCAL`, `SET TRANSACTION` or `SET CONSTRAINTS`),
/// `LISTEN`, a named `PREPARE`, `DEALLOCATE` or `DISCARD` (which also leave sqlx's statement
/// cache out of step), `LOAD`, a temporary table or view. A false "yes" costs a `DISCARD ALL`
/// on return.
fn session_statement(statement: &str) -> bool {
    let mut words = statement.split_whitespace();
    let Some(first) = words.next() else { return false };
    let is = |w: &str| first.eq_ignore_ascii_case(w);
    let has = |w: &str| statement.split_whitespace().any(|r| r.eq_ignore_ascii_case(w));
    if is("SET") {
        let second = words.next().unwrap_or_default();
        return !["LOCAL", "TRANSACTION", "CONSTRAINTS"]
            .iter()
            .any(|w| second.eq_ignore_ascii_case(w));
    }
    is("LISTEN")
        || is("DEALLOCATE")
        || is("DISCARD")
        || is("LOAD")
        || (is("PREPARE") && !has("TRANSACTION"))
        || has("TEMP")
        || has("TEMPORARY")
}

/// Whether `sql` names a function that changes the session wherever it is called: a session
/// advisory lock (`pg_advisory_lock`, `pg_try_advisory_lock_shared`..., not the `_xact_`
/// ones) or `set_config`. Both names hold a `_`, so only the text around each `_` is read.
fn calls_session_functions(sql: &str) -> bool {
    let b = sql.as_bytes();
    let at = |start: usize, name: &str| {
        b.get(start..start + name.len()).is_some_and(|w| w.eq_ignore_ascii_case(name.as_bytes()))
    };
    sql.match_indices('_')
        .any(|(i, _)| (i >= 8 && at(i - 8, "advisory_lock")) || (i >= 3 && at(i - 3, "set_config")))
}

/// The transaction effect ([`classify`]) of these statements, keywords only; `complete` when nothing was left
/// unread.
fn effect_of<'a>(statements: impl Iterator<Item = &'a str>, complete: bool) -> Option<bool> {
    let mut effect = None;
    let mut atomic_body = false;
    for statement in statements {
        let Some(first) = statement.split_whitespace().next() else { continue };
        let is = |w: &str| first.eq_ignore_ascii_case(w);
        let words = || statement.split_whitespace();
        let has = |w: &str| words().any(|r| r.eq_ignore_ascii_case(w));
        if atomic_body {
            // The body's statements run inside the function; its `END` closes the body.
            atomic_body = !is("END");
            continue;
        }
        // `CREATE FUNCTION|PROCEDURE ... BEGIN ATOMIC` opens a body the statements up to its
        // `END` belong to (unless the body is empty: `BEGIN ATOMIC END`).
        if is("CREATE")
            && (has("FUNCTION") || has("PROCEDURE"))
            && words()
                .zip(words().skip(1))
                .any(|(a, b)| a.eq_ignore_ascii_case("BEGIN") && b.eq_ignore_ascii_case("ATOMIC"))
        {
            atomic_body = !words().last().is_some_and(|w| w.eq_ignore_ascii_case("END"));
            continue;
        }
        if is("BEGIN") || is("START") {
            effect = Some(true);
        } else if is("COMMIT") || is("END") || is("ROLLBACK") || is("ABORT") || is("PREPARE") {
            if is("PREPARE") && !has("TRANSACTION") {
                continue; // `PREPARE name AS ...`: a prepared statement.
            }
            if is("ROLLBACK") && has("TO") {
                continue; // `ROLLBACK TO SAVEPOINT`: still inside the transaction.
            }
            if has("PREPARED") {
                continue; // `COMMIT PREPARED 'id'`: ends a prepared transaction, not this one.
            }
            let chain = has("CHAIN") && !has("NO");
            if chain || complete {
                effect = Some(chain);
            }
        }
    }
    effect
}

/// Where the quoted run opened by `b[start]` (`quote`) closes, exclusive: a doubled quote stands
/// for one, and with `backslash` a `\` escapes the byte after it. `None` if it never closes.
fn quoted_end(b: &[u8], start: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut j = start + 1;
    loop {
        match b.get(j) {
            None => return None,
            Some(b'\\') if backslash => j += 2,
            Some(&c) if c == quote && b.get(j + 1) == Some(&quote) => j += 2,
            Some(&c) if c == quote => return Some(j + 1),
            Some(_) => j += 1,
        }
    }
}

/// The statements of `sql`, split on the `;`s that separate statements, with strings, quoted
/// identifiers, dollar-quoted bodies and comments blanked out, so only keywords are left to
/// read; and whether every quote and comment was closed.
fn statements(sql: &str) -> (Vec<String>, bool) {
    let b = sql.as_bytes();
    let (mut done, mut current) = (Vec::new(), String::new());
    let mut i = 0;
    // PostgreSQL's identifier (and dollar-quote tag) characters: letters, digits, `_` and any
    // byte of a non-ASCII character.
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        // Where the quoted or commented run starting at `i` ends (exclusive), or `None` if it
        // never does.
        let skip: Option<Option<usize>> = match c {
            b'\'' => {
                // An E'...' string takes backslash escapes; '' is a quote in any string.
                let escapes =
                    i > 0 && b[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !ident(b[i - 2]));
                Some(quoted_end(b, i, b'\'', escapes))
            }
            b'"' => Some(quoted_end(b, i, b'"', false)),
            // A line comment ends at a newline or a carriage return, as in PostgreSQL.
            b'-' if next == Some(b'-') => Some(Some(
                b[i..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(b.len(), |n| i + n),
            )),
            b'/' if next == Some(b'*') => {
                // Block comments nest.
                let (mut depth, mut j) = (1, i + 2);
                loop {
                    match (b.get(j), b.get(j + 1)) {
                        (None, _) => break Some(None),
                        (Some(b'/'), Some(b'*')) => (depth, j) = (depth + 1, j + 2),
                        (Some(b'*'), Some(b'/')) if depth == 1 => break Some(Some(j + 2)),
                        (Some(b'*'), Some(b'/')) => (depth, j) = (depth - 1, j + 2),
                        _ => j += 1,
                    }
                }
            }
            // `$tag$ ... $tag$` (the tag may be empty); `$1` is a parameter, and a `$` inside
            // an identifier (`x$$`) is part of it.
            b'$' if i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'$') => {
                let tag_len = b[i + 1..].iter().position(|&c| !ident(c));
                match tag_len {
                    Some(n)
                        if b[i + 1 + n] == b'$'
                            && !b.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &sql[i..i + n + 2];
                        Some(
                            sql[i + tag.len()..].find(tag).map(|at| i + tag.len() + at + tag.len()),
                        )
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match skip {
            Some(Some(end)) => {
                current.push(' ');
                i = end;
            }
            Some(None) => {
                done.push(current);
                return (done, false);
            }
            None if c == b';' => {
                done.push(std::mem::take(&mut current));
                i += 1;
            }
            None => {
                // Keywords are ASCII; anything else only has to keep words apart.
                current.push(if c.is_ascii() { char::from(c) } else { ' ' });
                i += 1;
            }
        }
    }
    done.push(current);
    (done, true)
}

/// A query wrapper that reads the SQL on its way to the server.
struct Sniff<E> {
    inner: E,
    flags: Arc<Flags>,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Sniff<E> {
    fn sql(self) -> SqlStr {
        let sql = self.inner.sql();
        self.flags.track(sql.as_str());
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

/// A result stream that marks the connection done when it ends and broken on a fatal error.
struct Watched<'e> {
    stream: BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>,
    flags: Arc<Flags>,
}

impl Stream for Watched<'_> {
    type Item = Result<Either<PgQueryResult, PgRow>, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.stream.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => self.flags.finished(None),
            Poll::Ready(Some(Err(e))) => self.flags.note_error(e),
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::{PgConn, transaction_effect};

    /// The server-side check tells an open transaction, an aborted one and none apart, also
    /// right after a query in the extended protocol (which moves the statement time).
    #[tokio::test]
    async fn the_bare_check_tells_an_open_transaction_from_none() {
        let url = crate::cluster::tests::database_url();
        let mut conn = PgConn::new(sqlx::PgConnection::connect(&url).await.unwrap());
        assert!(!conn.bare_tx_open().await.unwrap(), "a fresh connection");
        sqlx::query("SELECT $1::int").bind(1).execute(&mut conn.inner).await.unwrap();
        assert!(!conn.bare_tx_open().await.unwrap(), "after an extended-protocol query");
        sqlx::raw_sql("BEGIN").execute(&mut conn.inner).await.unwrap();
        assert!(conn.bare_tx_open().await.unwrap(), "inside BEGIN");
        assert!(sqlx::raw_sql("SELECT 1/0").execute(&mut conn.inner).await.is_err());
        assert!(conn.bare_tx_open().await.unwrap(), "an aborted transaction");
        sqlx::raw_sql("ROLLBACK").execute(&mut conn.inner).await.unwrap();
        assert!(!conn.bare_tx_open().await.unwrap(), "after ROLLBACK");
    }

    /// `conn.begin()` on the pool's guard resolves to [`PgConn::begin`]: sqlx tracks the
    /// transaction, so it is no bare use, and a committed one leaves nothing to check.
    #[tokio::test]
    async fn an_sqlx_transaction_on_the_guard_is_not_a_bare_use() {
        let manager = crate::PgManager::from_url(&crate::cluster::tests::database_url()).unwrap();
        let pool = crate::PgPool::builder(manager).pool_size(1).build().unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let tx = conn.begin().await.unwrap();
        tx.commit().await.unwrap();
        assert!(!conn.needs_reset(true), "committed: nothing to check on return");
        let tx = conn.begin().await.unwrap();
        drop(tx);
        assert!(conn.needs_reset(true), "dropped: sqlx's queued ROLLBACK must go first");
        drop(conn);
        pool.close().await.unwrap();
    }

    #[test]
    fn statements_that_change_the_session_are_recognised() {
        let cases: &[(&str, bool)] = &[
            ("SELECT 1", false),
            ("select * from settings where name = $1", false),
            ("INSERT INTO t VALUES ('SET x = 1')", false),
            ("SET search_path TO tenant_7", true),
            ("set role reporting", true),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", true),
            ("SET LOCAL statement_timeout = 100", false),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
            ("SET CONSTRAINTS ALL DEFERRED", false),
            ("BEGIN; SET statement_timeout = 5; COMMIT", true),
            ("listen jobs", true),
            ("UNLISTEN *", false),
            ("PREPARE q AS SELECT 1", true),
            ("PREPARE TRANSACTION 'x'", false),
            ("DEALLOCATE ALL", true),
            ("DISCARD TEMP", true),
            ("CREATE TEMP TABLE scratch (x int)", true),
            ("create temporary view v as select 1", true),
            ("SELECT * INTO TEMP t2 FROM t", true),
            ("SELECT pg_advisory_lock(42)", true),
            ("SELECT pg_try_advisory_lock_shared(1, 2)", true),
            ("SELECT pg_advisory_xact_lock(42)", false),
            ("SELECT set_config('app.user', '7', false)", true),
            ("-- SET x = 1\nSELECT 1", false),
            ("SELECT 'a;b'; SET x = 1", true),
        ];
        for (sql, expected) in cases {
            assert_eq!(super::changes_session(sql), *expected, "{sql}");
        }
    }

    #[test]
    fn transaction_statements_are_recognised() {
        let cases: &[(&str, Option<bool>)] = &[
            ("SELECT 1", None),
            ("begin", Some(true)),
            ("  BEGIN ISOLATION LEVEL SERIALIZABLE", Some(true)),
            ("start transaction read only", Some(true)),
            ("BEGIN; INSERT INTO t VALUES (1); COMMIT", Some(false)),
            ("commit", Some(false)),
            ("END", Some(false)),
            ("rollback", Some(false)),
            ("ABORT", Some(false)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("COMMIT AND CHAIN", Some(true)),
            ("COMMIT AND NO CHAIN", Some(false)),
            ("PREPARE TRANSACTION 'x'", Some(false)),
            ("PREPARE q AS SELECT 1", None),
            ("-- a comment\nBEGIN", Some(true)),
            ("select begin_at from events", None),
            ("", None),
            // Strings, bodies and comments are read as PostgreSQL's lexer reads them.
            ("BEGIN; INSERT INTO t VALUES ('a;b', E'it\\'s; x', \"c;d\"); COMMIT", Some(false)),
            ("BEGIN; SELECT $1::text; COMMIT", Some(false)),
            ("BEGIN; SELECT $tag$ ; END $tag$; COMMIT", Some(false)),
            ("BEGIN; /* a /* nested; */ COMMIT; */ SELECT 1", Some(true)),
            ("BEGIN; CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END", Some(true)),
            (
                "BEGIN; CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END; COMMIT",
                Some(false),
            ),
            // A line comment also ends at a carriage return.
            ("COMMIT; -- done\rBEGIN", Some(true)),
            // Non-ASCII dollar-quote tags, and `$` inside identifiers.
            ("BEGIN; DO $é$ BEGIN PERFORM 1; END $é$", Some(true)),
            ("SELECT 1 AS é$$; BEGIN; SELECT 1 AS ö$$", Some(true)),
            ("SELECT 1 AS x$$$; BEGIN; SELECT 1 AS y$$$", Some(true)),
            // An empty atomic body, and `begin atomic` that is not a body.
            ("CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END; BEGIN", Some(true)),
            ("CREATE TABLE t (begin atomic); BEGIN", Some(true)),
            // Prepared transactions are not this session's.
            ("BEGIN; COMMIT PREPARED 'x'", Some(true)),
            // Unterminated: nothing after the quote can be read, so nothing there ends one.
            ("BEGIN; SELECT 'oops; COMMIT", Some(true)),
            // A `;` inside a body, a string or a comment does not end the transaction.
            ("BEGIN; DO $$ BEGIN IF true THEN PERFORM 1; END IF; END $$", Some(true)),
            ("DO $$ BEGIN PERFORM 1; END $$", None),
            ("SELECT 'a; commit'", None),
            ("SELECT 1 -- x; COMMIT", None),
            ("SELECT 1 /* ; END */", None),
            (
                "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql",
                None,
            ),
            // A single statement is read whole, quotes and all.
            ("COMMIT;", Some(false)),
            ("-- done\nROLLBACK", Some(false)),
        ];
        for (sql, want) in cases {
            assert_eq!(transaction_effect(sql), *want, "{sql:?}");
        }
    }
}
