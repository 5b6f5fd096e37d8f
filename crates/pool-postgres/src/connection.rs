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
/// - an error that means the connection is gone (an IO, TLS or protocol error, or a `FATAL`
///   error from the server such as `pg_terminate_backend`).
///
/// Statements run through `&mut **conn` (the bare `PgConnection`) bypass the watch: a raw
/// `BEGIN` sent that way is not seen by the pool.
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

    /// Whether the pool must clear state before anyone else gets this connection: an open raw
    /// or sqlx transaction, an unfinished query, or commands sqlx queued but has not sent yet (a
    /// dropped transaction's `ROLLBACK`).
    pub(crate) fn needs_reset(&self) -> bool {
        self.flags.get(RAW_TX | BUSY) || self.inner.is_in_transaction() || self.inner.should_flush()
    }

    /// Clears what [`needs_reset`](Self::needs_reset) reported: drains an unfinished query and
    /// sends queued commands (one `Sync` round trip), rolls back sqlx transactions (`ROLLBACK`
    /// or `ROLLBACK TO SAVEPOINT` per level) and a raw transaction (`ROLLBACK`).
    pub(crate) async fn reset(&mut self) -> Result<(), sqlx::Error> {
        let result = self.reset_inner().await;
        if let Err(e) = &result {
            self.flags.note_error(e);
        }
        result
    }

    async fn reset_inner(&mut self) -> Result<(), sqlx::Error> {
        if self.flags.get(BUSY) || self.inner.should_flush() {
            self.inner.ping().await?;
            self.flags.clear(BUSY);
        }
        while self.inner.is_in_transaction() {
            <Postgres as sqlx::Database>::TransactionManager::rollback(&mut self.inner).await?;
        }
        if self.flags.get(RAW_TX) {
            self.inner.execute("ROLLBACK").await?;
            self.flags.clear(RAW_TX);
        }
        Ok(())
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
        if let Some(e) = error {
            self.note_error(e);
        }
    }

    fn note_error(&self, error: &sqlx::Error) {
        if is_fatal(error) {
            self.set(BROKEN);
        }
    }

    /// Updates the raw transaction flag from the statements of `sql`.
    fn track(&self, sql: &str) {
        match transaction_effect(sql) {
            Some(true) => self.set(RAW_TX),
            Some(false) => self.clear(RAW_TX),
            None => {}
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

/// What the statements of `sql` leave behind: `Some(true)` when the last transaction control
/// statement opens a transaction (`BEGIN`, `START TRANSACTION`, `COMMIT AND CHAIN`),
/// `Some(false)` when it ends one (`COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`),
/// `None` when there is none. A heuristic on leading keywords: a false positive only costs one
/// `ROLLBACK` on return.
fn transaction_effect(sql: &str) -> Option<bool> {
    let mut effect = None;
    for statement in sql.split(';') {
        let mut words = statement
            .lines()
            .map(|line| line.split("--").next().unwrap_or_default())
            .flat_map(str::split_whitespace);
        let Some(first) = words.next() else { continue };
        let is = |w: &str| first.eq_ignore_ascii_case(w);
        if is("BEGIN") || is("START") {
            effect = Some(true);
        } else if is("COMMIT") || is("END") || is("ROLLBACK") || is("ABORT") || is("PREPARE") {
            let rest: Vec<&str> = words.collect();
            let has = |w: &str| rest.iter().any(|r| r.eq_ignore_ascii_case(w));
            if is("PREPARE") && !has("TRANSACTION") {
                continue; // `PREPARE name AS ...`: a prepared statement.
            }
            if is("ROLLBACK") && has("TO") {
                continue; // `ROLLBACK TO SAVEPOINT`: still inside the transaction.
            }
            effect = Some(has("CHAIN") && !has("NO"));
        }
    }
    effect
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
    use super::transaction_effect;

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
        ];
        for (sql, want) in cases {
            assert_eq!(transaction_effect(sql), *want, "{sql:?}");
        }
    }
}
