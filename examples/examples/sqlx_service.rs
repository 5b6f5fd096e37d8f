//! A plain sqlx service that swaps `sqlx::PgPool` for pool-postgres's `PgPool`. The queries do
//! not change: a pooled connection is an sqlx executor (`&mut *conn`). What changes is the
//! pool: built from a `PgManager`, FIFO-fair, resizable, with stats, and a connection returns
//! with nothing of its user's session (a temporary table, a `SET`) left on it.
//!
//! ```text
//! // before                                        // after
//! let pool = sqlx::postgres::PgPoolOptions::new()  let pool = PgPool::builder(PgManager::from_url(&url)?)
//!     .max_connections(5)                              .pool_size(5)
//!     .connect(&url).await?;                           .build()?;
//! sqlx::query(..).execute(&pool).await?;          let mut conn = pool.acquire().await?;
//!                                                  sqlx::query(..).execute(&mut *conn).await?;
//! ```
//!
//! It keeps a to-do list in a table of its own, from 20 tasks over 5 connections, prints what
//! it did and the pool's stats, drops the table and exits: `cargo run -p pool-examples --example
//! sqlx_service` (with `DATABASE_URL`, or the local PostgreSQL).

use std::time::Duration;

use pool_examples::{Result, database_url};
use pool_postgres::sqlx::{self, AssertSqlSafe};
use pool_postgres::{PgManager, PgPool};

/// The service: to-dos in a table of its own, named after the process (so sqlx is told the
/// statements' text is safe: no input goes into it).
struct Todos {
    pool: PgPool,
    table: String,
}

impl Todos {
    /// Adds a to-do; its id.
    async fn add(&self, title: &str) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!("INSERT INTO {} (title) VALUES ($1) RETURNING id", self.table);
        Ok(sqlx::query_scalar(AssertSqlSafe(sql)).bind(title).fetch_one(&mut *conn).await?)
    }

    /// How many to-dos there are.
    async fn count(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!("SELECT count(*) FROM {}", self.table);
        Ok(sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *conn).await?)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let pool = PgPool::builder(PgManager::from_url(&database_url())?)
        .name("todos")
        .pool_size(5)
        .max_overflow(0)
        .build()?;
    pool.warmed(Duration::from_secs(10)).await?;
    let todos = std::sync::Arc::new(Todos {
        table: format!("pool_examples_todos_{}", std::process::id()),
        pool: pool.clone(),
    });
    {
        let mut conn = pool.acquire().await?;
        let sql =
            format!("CREATE TABLE {} (id bigserial PRIMARY KEY, title text NOT NULL)", todos.table);
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
    }

    // 20 tasks over 5 connections: the others wait their turn, first come first served.
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..20 {
        let todos = todos.clone();
        tasks.spawn(async move {
            for item in 0..5 {
                todos.add(&format!("task {task}, item {item}")).await?;
            }
            Result::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let count = todos.count().await?;
    println!(
        "sqlx_service: 20 tasks added {count} to-dos over {} connections",
        pool.config().pool_size
    );

    // What a session sets stays with its user: the next checkout finds none of it.
    {
        let mut conn = pool.acquire().await?;
        sqlx::query("SET application_name = 'changed by a user'").execute(&mut *conn).await?;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut conn = pool.acquire().await?;
        let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
            .fetch_one(&mut *conn)
            .await?;
        seen.push(name);
    }
    println!("application_name on the next checkouts: {seen:?}");

    let stats = pool.stats();
    println!(
        "pool todos: {} checkouts, {} waited, wait p99 {:?}, {} connections opened",
        stats.acquires,
        stats.waits,
        stats.wait_time.quantile(0.99),
        stats.connections_created
    );
    {
        let mut conn = pool.acquire().await?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {}", todos.table)))
            .execute(&mut *conn)
            .await?;
    }
    pool.close().await?;
    if count != 100 || seen.iter().any(|name| name == "changed by a user") {
        return Err(format!("{count} to-dos, application_name {seen:?}").into());
    }
    println!("sqlx_service: done");
    Ok(())
}
