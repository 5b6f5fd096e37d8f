//! What the examples share: where the services are (`DATABASE_URL`, `REDIS_URL`, with the local
//! servers as defaults), and [`get`], a small HTTP/1.1 client with which a server example calls
//! itself. Each example is in `examples/examples/` and runs with
//! `cargo run -p pool-examples --example <name>`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What an example's `main` returns: any error, printed by the runtime, exits 1.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `DATABASE_URL`, or the local PostgreSQL's `postgres` database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `REDIS_URL`, or the local Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `GET path` on the server at `addr`, with `Authorization: Bearer <token>` when a token is
/// given, over one connection closed after the answer: its status and body.
///
/// # Errors
///
/// When the server cannot be reached, or answers with something that is not HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("an answer without a blank line")?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {head:?}"))?;
    Ok((status, body.to_owned()))
}
