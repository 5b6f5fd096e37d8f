//! Tests of [`PgConn`]'s bookkeeping: which statements count as a use, and what the reset
//! sends, against the shared test server.

use sqlx::Connection as _;

use super::{PgConn, ResetOnReturn, is_inert};

async fn connect() -> PgConn {
    let url = crate::cluster::tests::database_url();
    PgConn::new(sqlx::PgConnection::connect(&url).await.expect("the shared test server"))
}

#[test]
fn only_selects_of_constants_are_inert() {
    let cases: &[(&str, bool)] = &[
        ("SELECT 1", true),
        ("select 1;", true),
        ("  SELECT\n1 ;  ", true),
        ("SELECT 1, 'a''b' AS text, NULL, true x, FALSE", true),
        ("SELECT 'a;b'", true),
        ("SELECT 1.5", true),
        // Anything that may run code the text does not show.
        ("SELECT 1 FROM t", false),
        ("SELECT x FROM t", false),
        ("SELECT now()", false),
        ("SELECT f()", false),
        ("SELECT $1", false),
        ("SELECT 1::int", false),
        ("SELECT 1 + 1", false),
        ("SELECT -1", false),
        ("SELECT 1 INTO TEMP t", false),
        ("SELECT 1; SET search_path TO x", false),
        ("SELECT 1 UNION SELECT 2", false),
        ("SELECT E'x'", false),
        ("SELECT 'unterminated", false),
        ("SELECT", false),
        ("SELECT1", false),
        ("select_1", false),
        ("BEGIN", false),
        ("SET search_path TO pg_catalog", false),
        ("WITH x AS (SELECT 1) SELECT 1", false),
        ("/* SELECT 1 */ DO $$ BEGIN END $$", false),
        ("", false),
    ];
    for (sql, inert) in cases {
        assert_eq!(is_inert(sql), *inert, "{sql:?}");
    }
}

#[test]
fn the_reset_mode_reads_and_prints_its_name() {
    for mode in [ResetOnReturn::Session, ResetOnReturn::Transaction] {
        assert_eq!(mode.to_string().parse::<ResetOnReturn>(), Ok(mode));
    }
    assert_eq!(" Session ".parse::<ResetOnReturn>(), Ok(ResetOnReturn::Session));
    let err = "discard".parse::<ResetOnReturn>().unwrap_err().to_string();
    assert!(err.contains("\"discard\"") && err.contains("\"session\""), "{err}");
}

/// A ping or a `SELECT 1` leaves nothing to reset; a table, a function, an sqlx transaction or
/// the bare connection does.
#[tokio::test]
async fn what_counts_as_a_use() {
    let mut conn = connect().await;
    conn.ping().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    assert!(!conn.needs_reset(), "a ping and SELECT 1 need no reset");
    sqlx::query("SELECT now()").execute(&mut conn).await.unwrap();
    assert!(conn.needs_reset(), "a function call");
    conn.reset(ResetOnReturn::Session, None).await.unwrap();
    assert!(!conn.needs_reset(), "reset");
    let tx = conn.begin().await.unwrap();
    tx.commit().await.unwrap();
    assert!(conn.needs_reset(), "an sqlx transaction");
    conn.reset(ResetOnReturn::Transaction, None).await.unwrap();
    let bare: &mut sqlx::PgConnection = &mut conn;
    let _ = bare;
    assert!(conn.needs_reset(), "a mutable borrow of the bare connection");
    conn.reset(ResetOnReturn::Session, None).await.unwrap();
    assert!(!conn.needs_reset());
    // The crate's own queries are no use either.
    let (lsn,): (Option<String>,) =
        conn.fetch_own("SELECT pg_last_wal_replay_lsn()::text").await.unwrap();
    assert_eq!(lsn, None, "the shared server is a primary");
    assert!(!conn.needs_reset(), "the crate's own read-only query");
}

/// The session reset is plain SQL every server version we support accepts, on a fresh
/// connection and inside a transaction (where it is rolled back and run again).
#[tokio::test]
async fn the_session_reset_runs_on_a_fresh_connection_and_inside_a_transaction() {
    let mut conn = connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(super::session_reset(0, true)))
        .execute(&mut conn.inner)
        .await
        .expect("the session reset on a fresh connection");
    sqlx::raw_sql("BEGIN; SET LOCAL statement_timeout = 5").execute(&mut *conn).await.unwrap();
    conn.reset(ResetOnReturn::Session, None).await.unwrap();
    // Asked in the simple protocol: in the extended one each message moves the statement time.
    let row = sqlx::raw_sql(
        "SELECT pg_catalog.statement_timestamp() = pg_catalog.transaction_timestamp()",
    )
    .fetch_one(&mut conn.inner)
    .await
    .unwrap();
    assert!(sqlx::Row::get::<bool, _>(&row, 0), "no transaction is open after the reset");
}
