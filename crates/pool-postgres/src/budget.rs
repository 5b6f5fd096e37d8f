//! [`connection_budget`]: how many connections a PostgreSQL server lets this application's
//! pools open, read from the server itself, for the optimizer's budget.

use sqlx::PgConnection;

/// The server's connection budget: `max_connections` less the connections it reserves for
/// superusers (`superuser_reserved_connections`) and, from PostgreSQL 16, for roles with
/// `pg_use_reserved_connections` (`reserved_connections`).
///
/// The optimizer (`pool_optimizer::Budget`) shares it among every pool on the server: the
/// primary and each replica have their own. Subtract what other services and instances use.
///
/// # Errors
///
/// The query's error, if the server cannot be asked.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use pool_postgres::sqlx::{Connection, PgConnection};
///
/// let mut conn = PgConnection::connect("postgres://postgres@127.0.0.1/postgres").await?;
/// let budget = pool_postgres::connection_budget(&mut conn).await?;
/// # Ok(()) }
/// ```
pub async fn connection_budget(conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
    let (max, superuser, reserved): (i64, i64, i64) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int8, \
                current_setting('superuser_reserved_connections')::int8, \
                coalesce(current_setting('reserved_connections', true), '0')::int8",
    )
    .fetch_one(conn)
    .await?;
    Ok(usize::try_from(max - superuser - reserved).unwrap_or(0))
}
