//! No state crosses from one user of a PostgreSQL connection to the next: the pool's session
//! guarantee, case by case and under randomized sequences of statements, against a real server.
//!
//! Every test uses a pool of one connection, so the next checkout gets the backend the previous
//! user left (the same `pg_backend_pid()`), and a schema of its own, named by the test, holding
//! tables named `transaction`, `set`, `temp` and `accounts`, a sequence and a function and a
//! procedure that change the session. The pool's connections find that schema through their
//! startup `search_path`, which is part of the session the server starts them with, not a change.

use std::fmt::Write as _;
use std::time::Duration;

use pool_harness::postgres_url;
use pool_postgres::sqlx::postgres::{PgConnectOptions, PgConnection};
use pool_postgres::sqlx::{self, AssertSqlSafe, Connection, Row as _};
use pool_postgres::{PgManager, PgPool, PgPooledConnection};

type Result<T = ()> = anyhow::Result<T>;

/// What a clean session looks like, read in one simple-protocol query. Every name is
/// schema-qualified: a previous user may have changed `search_path`.
const CHECK: &str = "\
    SELECT pg_catalog.statement_timestamp() = pg_catalog.transaction_timestamp(), \
      (SELECT pg_catalog.string_agg(name, ',') FROM pg_catalog.pg_settings WHERE source = 'session'), \
      current_user = session_user, current_user::text, \
      (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
        + (SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
        + (SELECT count(*) FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()), \
      (SELECT count(*) FROM pg_catalog.pg_cursors), \
      (SELECT count(*) FROM pg_catalog.pg_locks \
        WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
      (SELECT count(*) FROM pg_catalog.pg_prepared_statements \
        WHERE from_sql AND name <> 'pool_postgres_reset_check'), \
      (SELECT count(*) FROM pg_catalog.pg_listening_channels())";

/// What `conn`'s session carries that a clean one does not, one entry per kind; empty when
/// clean. With `lastval`, also whether `lastval()` is defined (the probe fails inside a
/// transaction and would abort it, so a caller looking at its own open transaction skips it).
async fn dirt(conn: &mut PgConnection, lastval: bool) -> Vec<String> {
    // The simple protocol: in the extended one, each message moves `statement_timestamp()`.
    let row = match sqlx::raw_sql(CHECK).fetch_one(&mut *conn).await {
        Ok(row) => row,
        Err(e) => return vec![format!("the check failed: {e}")],
    };
    let (idle, settings, own_role, user): (bool, Option<String>, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let counts: Vec<i64> = (4..9).map(|i| row.get(i)).collect();
    let [temp, cursors, locks, prepared, listening] = counts[..] else { unreachable!() };
    let mut dirt = Vec::new();
    if !idle {
        dirt.push("a transaction is open".to_owned());
    }
    if let Some(settings) = settings {
        dirt.push(format!("settings changed in the session: {settings}"));
    }
    if !own_role {
        dirt.push(format!("running as role {user}"));
    }
    for (n, what) in [
        (temp, "temporary objects"),
        (cursors, "open cursors"),
        (locks, "advisory locks held"),
        (prepared, "prepared statements"),
        (listening, "channels listened to"),
    ] {
        if n > 0 {
            dirt.push(format!("{n} {what}"));
        }
    }
    if lastval {
        match sqlx::raw_sql("SELECT pg_catalog.lastval()").execute(&mut *conn).await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55000") => {}
            Ok(_) => dirt.push("lastval() is defined".to_owned()),
            Err(e) => dirt.push(format!("lastval() failed otherwise: {e}")),
        }
    }
    dirt
}

/// Asserts that the next user of the fixture's pool gets the backend `pid` with a clean
/// session, and returns it.
async fn next_user(fx: &Fixture, pid: i32, what: &str) -> Result<PgPooledConnection> {
    let mut conn = fx.pool.acquire().await?;
    let again = backend_pid(&mut conn).await?;
    assert_eq!(again, pid, "{what}: the connection was replaced, not cleaned");
    let dirt = dirt(&mut conn, true).await;
    assert!(dirt.is_empty(), "{what}: the next user inherited {}", dirt.join("; "));
    Ok(conn)
}

async fn backend_pid(conn: &mut PgPooledConnection) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT pg_catalog.pg_backend_pid()").fetch_one(&mut **conn).await?)
}

/// A schema of the test's own, a side connection to look at the server from outside the pool,
/// and a pool of one connection whose startup `search_path` is that schema.
struct Fixture {
    schema: String,
    /// An advisory lock key of the test's own.
    key: i64,
    side: PgConnection,
    pool: PgPool,
}

impl Fixture {
    async fn new(name: &str) -> Result<Fixture> {
        let url = postgres_url();
        let schema = format!("pool_session_{name}");
        let key =
            27_000 + i64::from(name.bytes().fold(0u16, |h, b| h.wrapping_mul(31) ^ u16::from(b)));
        let mut side = PgConnection::connect(&url).await?;
        let setup = format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.transaction (amount int); \
             CREATE TABLE {schema}.accounts (owner text); \
             CREATE TABLE {schema}.\"set\" (x int); \
             CREATE TABLE {schema}.temp (x int); \
             CREATE SEQUENCE {schema}.seq; \
             CREATE FUNCTION {schema}.change_session() RETURNS int LANGUAGE plpgsql AS $$ \
               BEGIN \
                 PERFORM pg_catalog.set_config('statement_timeout', '4321', false); \
                 CREATE TEMP TABLE IF NOT EXISTS fn_scratch (x int); \
                 PERFORM pg_catalog.pg_advisory_lock({key}); \
                 PERFORM pg_catalog.nextval('{schema}.seq'); \
                 RETURN 1; \
               END $$; \
             CREATE PROCEDURE {schema}.change_session_proc() LANGUAGE plpgsql AS $$ \
               BEGIN \
                 PERFORM pg_catalog.set_config('app.proc', 'on', false); \
                 COMMIT; \
                 PERFORM pg_catalog.pg_advisory_lock({key}); \
                 EXECUTE 'LISTEN proc_channel'; \
               END $$; \
             GRANT USAGE ON SCHEMA {schema} TO PUBLIC; \
             GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO PUBLIC; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO PUBLIC"
        );
        sqlx::raw_sql(AssertSqlSafe(setup)).execute(&mut side).await?;
        let options: PgConnectOptions = url.parse()?;
        let options = options
            .application_name(&format!("pool-session-{name}"))
            .options([("search_path", schema.as_str())]);
        let pool = PgPool::builder(PgManager::new(options))
            .name(name)
            .pool_size(1)
            .max_overflow(0)
            .build()?;
        Ok(Fixture { schema, key, side, pool })
    }

    /// The first user's connection and its backend.
    async fn first_user(&self) -> Result<(PgPooledConnection, i32)> {
        let mut conn = self.pool.acquire().await?;
        let pid = backend_pid(&mut conn).await?;
        Ok((conn, pid))
    }

    /// Closes the pool (asserting that every session was cleaned, none closed) and drops the
    /// schema.
    async fn finish(mut self) -> Result {
        assert_eq!(
            self.pool.stats().closed.total(),
            0,
            "every connection was cleaned, none closed"
        );
        self.pool.close().await?;
        let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
        sqlx::raw_sql(AssertSqlSafe(drop)).execute(&mut self.side).await?;
        Ok(())
    }
}

async fn run(conn: &mut PgPooledConnection, sql: &str) -> Result {
    sqlx::query(AssertSqlSafe(sql.to_owned())).execute(&mut **conn).await?;
    Ok(())
}

/// Case 1: a transaction is left open, with a statement whose text holds the word
/// `transaction` (a table, a prepared statement's name). The next user must neither see the
/// uncommitted row nor have its own autocommit write swallowed by the open transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_never_reaches_the_next_user_whatever_its_text() -> Result {
    let mut fx = Fixture::new("case_1").await?;
    let prepares =
        ["PREPARE s AS SELECT sum(amount) FROM transaction", "PREPARE transaction AS SELECT 1"];
    for (round, prepare) in prepares.into_iter().enumerate() {
        let (mut a, pid) = fx.first_user().await?;
        sqlx::query("BEGIN").execute(&mut *a).await?;
        sqlx::query("INSERT INTO transaction VALUES (100)").execute(&mut *a).await?;
        sqlx::query(AssertSqlSafe(prepare)).execute(&mut *a).await?;
        drop(a);

        let mut b = next_user(&fx, pid, prepare).await?;
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM transaction WHERE amount = 100")
            .fetch_one(&mut *b)
            .await?;
        assert_eq!(seen, 0, "{prepare}: the next user sees the uncommitted row");
        let amount = 7 + i32::try_from(round)?;
        sqlx::query("INSERT INTO transaction VALUES ($1)").bind(amount).execute(&mut *b).await?;
        drop(b);
        let count = format!("SELECT count(*) FROM {}.transaction WHERE amount = $1", fx.schema);
        let committed: i64 =
            sqlx::query_scalar(AssertSqlSafe(count)).bind(amount).fetch_one(&mut fx.side).await?;
        assert_eq!(committed, 1, "{prepare}: the next user's autocommit write was lost");
    }
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.transaction WHERE amount = 100",
        fx.schema
    )))
    .fetch_one(&mut fx.side)
    .await?;
    assert_eq!(left, 0, "the abandoned row was committed");
    fx.finish().await
}

/// Case 2: session changes made inside an sqlx transaction (`conn.begin()`), the most common
/// way to use the pool, are reset; the advisory lock is free for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_inside_an_sqlx_transaction_are_reset() -> Result {
    let mut fx = Fixture::new("case_2").await?;
    let (mut a, pid) = fx.first_user().await?;
    let mut tx = a.begin().await?;
    sqlx::query("SET search_path TO pg_catalog").execute(&mut *tx).await?;
    sqlx::query("CREATE TEMP TABLE t (x int)").execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(fx.key).execute(&mut *tx).await?;
    tx.commit().await?;
    drop(a);

    let mut b = next_user(&fx, pid, "changes inside conn.begin()").await?;
    let path: String = sqlx::query_scalar("SHOW search_path").fetch_one(&mut *b).await?;
    assert_eq!(path, fx.schema, "the startup search_path is kept");
    drop(b);
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(fx.key)
        .fetch_one(&mut fx.side)
        .await?;
    assert!(free, "the advisory lock is still held by a pooled connection");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(fx.key).execute(&mut fx.side).await?;
    fx.finish().await
}

/// Case 3: a temporary table named through `pg_temp.` shadows a real table of the same name.
/// The next user must neither read it nor write into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_table_named_through_pg_temp_is_dropped() -> Result {
    let mut fx = Fixture::new("case_3").await?;
    let (mut a, pid) = fx.first_user().await?;
    run(&mut a, "CREATE TABLE pg_temp.accounts (owner text)").await?;
    run(&mut a, "INSERT INTO accounts VALUES ('alice-secret')").await?;
    drop(a);

    let mut b = next_user(&fx, pid, "CREATE TABLE pg_temp.accounts").await?;
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT owner FROM accounts").fetch_all(&mut *b).await?;
    assert!(owners.is_empty(), "the next user reads the previous user's rows: {owners:?}");
    run(&mut b, "INSERT INTO accounts VALUES ('bob')").await?;
    drop(b);
    let owners: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT owner FROM {}.accounts", fx.schema)))
            .fetch_all(&mut fx.side)
            .await?;
    assert_eq!(owners, ["bob"], "the next user's committed insert went into a temporary table");
    fx.finish().await
}

/// Case 4: a holdable cursor outlives its transaction, not its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holdable_cursor_is_closed() -> Result {
    let fx = Fixture::new("case_4").await?;
    let (mut a, pid) = fx.first_user().await?;
    run(&mut a, "DECLARE c CURSOR WITH HOLD FOR SELECT 'alice-secret'").await?;
    drop(a);

    let mut b = next_user(&fx, pid, "DECLARE ... WITH HOLD").await?;
    match sqlx::query_scalar::<_, String>("FETCH NEXT FROM c").fetch_optional(&mut *b).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("34000") => {}
        other => panic!("the next user can fetch from the previous user's cursor: {other:?}"),
    }
    drop(b);
    fx.finish().await
}

/// Case 5: changes made inside `DO` blocks, functions and procedures, which no reading of the
/// caller's SQL can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_inside_do_blocks_functions_and_procedures_are_reset() -> Result {
    let fx = Fixture::new("case_5").await?;
    let changes = [
        "DO $$ BEGIN SET search_path TO pg_catalog; END $$",
        "DO $$ BEGIN EXECUTE 'SET ROLE pg_monitor'; END $$",
        "SELECT change_session()",
        "CALL change_session_proc()",
    ];
    for change in changes {
        let (mut a, pid) = fx.first_user().await?;
        sqlx::raw_sql(AssertSqlSafe(change)).execute(&mut *a).await?;
        drop(a);
        let mut b = next_user(&fx, pid, change).await?;
        let (path, user): (String, String) =
            sqlx::query_as("SELECT current_setting('search_path'), current_user::text")
                .fetch_one(&mut *b)
                .await?;
        assert_eq!(path, fx.schema, "{change}");
        assert_ne!(user, "pg_monitor", "{change}");
        drop(b);
    }
    fx.finish().await
}

/// Case 6: a `SET` sent through the bare `&mut PgConnection`, as a helper function taking one
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_the_bare_connection_is_reset() -> Result {
    async fn tune(conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("SET statement_timeout = 1234").execute(conn).await.map(drop)
    }
    let fx = Fixture::new("case_6").await?;
    let (mut a, pid) = fx.first_user().await?;
    tune(&mut a).await?;
    drop(a);
    let mut b = next_user(&fx, pid, "SET on the bare connection").await?;
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut *b).await?;
    assert_eq!(timeout, "0");
    drop(b);
    fx.finish().await
}

/// Case 7: the sequence state of a session (`lastval()`, `currval()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_state_is_forgotten() -> Result {
    let fx = Fixture::new("case_7").await?;
    let (mut a, pid) = fx.first_user().await?;
    let n: i64 = sqlx::query_scalar("SELECT nextval('seq')").fetch_one(&mut *a).await?;
    assert_eq!(n, 1);
    drop(a);
    // `next_user` checks `lastval()`; `currval` must be undefined too.
    let mut b = next_user(&fx, pid, "nextval('seq')").await?;
    match sqlx::query_scalar::<_, i64>("SELECT currval('seq')").fetch_one(&mut *b).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55000") => {}
        other => panic!("currval() is defined for the next user: {other:?}"),
    }
    drop(b);
    fx.finish().await
}

/// sqlx's statement cache survives a reset when nothing changed it (no re-preparing), and is
/// emptied in step with the server when a user deallocated its statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_statement_cache_is_kept_and_kept_in_step() -> Result {
    let fx = Fixture::new("statement_cache").await?;
    let (mut a, pid) = fx.first_user().await?;
    let n: i32 = sqlx::query_scalar("SELECT $1::int").bind(1).fetch_one(&mut *a).await?;
    assert_eq!(n, 1);
    sqlx::query("SET statement_timeout = 1234").execute(&mut *a).await?;
    let cached = a.cached_statements_size();
    assert!(cached >= 1);
    drop(a);
    let mut b = next_user(&fx, pid, "a SET beside cached statements").await?;
    assert!(b.cached_statements_size() >= cached, "the statement cache was emptied for nothing");
    sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *b).await?;
    drop(b);
    let mut c = next_user(&fx, pid, "DEALLOCATE ALL").await?;
    let n: i32 = sqlx::query_scalar("SELECT $1::int").bind(2).fetch_one(&mut *c).await?;
    assert_eq!(n, 2, "sqlx's statement cache is in step with the server");
    drop(c);
    fx.finish().await
}

/// One step of a randomized sequence: a statement, and the path it takes to the server.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `sqlx::raw_sql` on the guard (the simple protocol; several statements allowed).
    Simple,
    /// `sqlx::query` on the guard (the extended protocol; one statement).
    Extended,
    /// `sqlx::raw_sql` on the bare `&mut PgConnection`.
    Bare,
    /// Inside a `DO` block, through `EXECUTE`.
    Do,
    /// Inside `conn.begin()`, then committed.
    Commit,
    /// Inside `conn.begin()`, then rolled back.
    Rollback,
    /// Inside `conn.begin()`, then dropped (sqlx queues the `ROLLBACK`).
    DropTx,
    /// Inside `conn.begin()`, then forgotten (sqlx never rolls it back).
    ForgetTx,
    /// Sent, then the future dropped after its first poll.
    Abandon,
}

const PATHS: [Path; 9] = [
    Path::Simple,
    Path::Extended,
    Path::Bare,
    Path::Do,
    Path::Commit,
    Path::Rollback,
    Path::DropTx,
    Path::ForgetTx,
    Path::Abandon,
];

/// Statements that change the session, the transaction, or nothing, with names that read like
/// keywords (`transaction`, `set`, `temp`, `pg_temp.`). `{key}` is the test's advisory lock.
const STATEMENTS: &[&str] = &[
    "BEGIN",
    "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "COMMIT",
    "ROLLBACK",
    "END",
    "COMMIT AND CHAIN",
    "SAVEPOINT sp",
    "ROLLBACK TO SAVEPOINT sp",
    "SELECT 1/0",
    "SET search_path TO pg_catalog",
    "SET LOCAL statement_timeout = 999",
    "SET statement_timeout = 1234",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SELECT set_config('app.tenant', '7', false)",
    "SELECT set_config('app.tenant', '8', true)",
    "SET ROLE pg_monitor",
    "SET LOCAL ROLE pg_monitor",
    "SET default_transaction_read_only = on",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "RESET ALL",
    "SET SESSION AUTHORIZATION pg_monitor",
    "CREATE TEMP TABLE IF NOT EXISTS scratch (x int)",
    "CREATE TABLE IF NOT EXISTS pg_temp.accounts (owner text)",
    "INSERT INTO accounts VALUES ('alice-secret')",
    "CREATE OR REPLACE FUNCTION pg_temp.tf() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELECT pg_advisory_lock({key})",
    "SELECT pg_advisory_xact_lock({key})",
    "SELECT pg_try_advisory_lock_shared({key})",
    // No `NOTIFY` of a channel the session listens to: sqlx fails the next query of a plain
    // connection that receives a notification with a protocol error, and the pool rightly
    // closes it; this test wants the connection reused.
    "LISTEN channel",
    "PREPARE p AS SELECT 1",
    "PREPARE transaction AS SELECT 2",
    "DEALLOCATE ALL",
    "DEALLOCATE p",
    "DISCARD ALL",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 'alice-secret'",
    "DECLARE c2 CURSOR FOR SELECT 1",
    "CLOSE c",
    "SELECT nextval('seq')",
    "INSERT INTO transaction VALUES (1)",
    "SELECT count(*) FROM transaction",
    "SELECT * FROM \"set\"",
    "INSERT INTO temp VALUES (1)",
    "SELECT change_session()",
    "CALL change_session_proc()",
    "DO $$ BEGIN PERFORM set_config('search_path', 'pg_catalog', false); END $$",
    "DO $$ BEGIN EXECUTE 'SET ROLE pg_monitor'; END $$",
    "DO $$ BEGIN CREATE TEMP TABLE IF NOT EXISTS do_scratch (x int); END $$",
    "SELECT 1",
    "SELECT pg_sleep(0.001)",
];

/// Runs `sql` on `conn` by `path`; errors (a `SAVEPOINT` outside a transaction, a permission
/// a changed role lacks) are part of the game and only counted.
async fn step(conn: &mut PgPooledConnection, path: Path, sql: &str) -> bool {
    let owned = || AssertSqlSafe(sql.to_owned());
    let result = match path {
        Path::Simple => sqlx::raw_sql(owned()).execute(&mut **conn).await.map(drop),
        Path::Extended => sqlx::query(owned()).execute(&mut **conn).await.map(drop),
        Path::Bare => {
            let bare: &mut PgConnection = conn;
            sqlx::raw_sql(owned()).execute(bare).await.map(drop)
        }
        Path::Do => {
            let body = format!("DO $do$ BEGIN EXECUTE '{}'; END $do$", sql.replace('\'', "''"));
            sqlx::raw_sql(AssertSqlSafe(body)).execute(&mut **conn).await.map(drop)
        }
        Path::Commit | Path::Rollback | Path::DropTx | Path::ForgetTx => match conn.begin().await {
            Err(e) => Err(e),
            Ok(mut tx) => {
                let result = sqlx::raw_sql(owned()).execute(&mut *tx).await.map(drop);
                match path {
                    Path::Commit => result.and(tx.commit().await),
                    Path::Rollback => result.and(tx.rollback().await),
                    Path::DropTx => result,
                    _ => {
                        std::mem::forget(tx);
                        result
                    }
                }
            }
        },
        Path::Abandon => {
            let query = sqlx::raw_sql(owned()).execute(&mut **conn);
            // Polled once (the query is written), then dropped.
            match tokio::time::timeout(Duration::ZERO, query).await {
                Ok(result) => result.map(drop),
                Err(_) => Ok(()),
            }
        }
    };
    result.is_ok()
}

/// Sequences of session- and transaction-changing statements over every path, each followed by
/// a checkout that must find the session clean. `POOL_SESSION_SEQUENCES` and
/// `POOL_SESSION_SEED` choose how many and which (CI runs the fixed default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_sequences_never_leave_state_for_the_next_user() -> Result {
    let env = |name: &str, default: u64| std::env::var(name).map_or(Ok(default), |v| v.parse());
    let sequences = env("POOL_SESSION_SEQUENCES", 1500)?;
    let seed = env("POOL_SESSION_SEED", 27)?;
    let fx = Fixture::new("randomized").await?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut dirty, mut failed_steps, mut steps) = (0u64, 0u64, 0u64);
    let mut conn = fx.pool.acquire().await?;
    let pid = backend_pid(&mut conn).await?;
    for n in 0..sequences {
        let mut log = String::new();
        for _ in 0..rng.usize(1..=6) {
            let path = PATHS[rng.usize(..PATHS.len())];
            let sql =
                STATEMENTS[rng.usize(..STATEMENTS.len())].replace("{key}", &fx.key.to_string());
            let ok = step(&mut conn, path, &sql).await;
            let _ = write!(log, "\n  {path:?}: {sql}{}", if ok { "" } else { "  (failed)" });
            steps += 1;
            failed_steps += u64::from(!ok);
        }
        // What the user leaves, seen from its own side (so the test knows it tests something).
        if !dirt(&mut conn, false).await.is_empty() {
            dirty += 1;
        }
        drop(conn);
        conn = fx.pool.acquire().await?;
        let what = format!("seed {seed}, sequence {n}:{log}\n");
        let closed = fx.pool.stats().closed;
        assert_eq!(
            backend_pid(&mut conn).await?,
            pid,
            "{what}the connection was replaced: {closed:?}"
        );
        let dirt = dirt(&mut conn, true).await;
        assert!(dirt.is_empty(), "{what}the next user inherited {}", dirt.join("; "));
    }
    drop(conn);
    println!(
        "{sequences} sequences (seed {seed}), {steps} statements ({failed_steps} failed), \
         {dirty} sequences left state behind, all of it cleared"
    );
    assert!(dirty * 2 > sequences, "too few sequences changed anything: {dirty} of {sequences}");
    assert!(failed_steps * 2 < steps, "most statements failed: {failed_steps} of {steps}");
    fx.finish().await
}
