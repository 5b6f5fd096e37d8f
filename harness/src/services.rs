//! The shared PostgreSQL and Redis that ordinary tests use.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Returns the shared PostgreSQL's URL: `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`.
///
/// # Panics
///
/// Panics, saying how to start it, when nothing accepts TCP connections there: tests
/// that need PostgreSQL fail rather than skip.
pub fn postgres_url() -> String {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    assert!(
        reachable(&url),
        "PostgreSQL is not reachable at {url} (DATABASE_URL): start it with `cargo xtask services up`, \
         or on the dev machine with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
    );
    url
}

/// Returns the shared Redis's URL: `REDIS_URL`, else `redis://127.0.0.1:6379`.
///
/// # Panics
///
/// Panics, saying how to start it, when nothing accepts TCP connections there: tests
/// that need Redis fail rather than skip.
pub fn redis_url() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    assert!(
        reachable(&url),
        "Redis is not reachable at {url} (REDIS_URL): start it with `cargo xtask services up`, \
         or on the dev machine with `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
         --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`"
    );
    url
}

/// Whether a TCP connection to the host and port of `url` succeeds within two seconds.
///
/// The port defaults to 5432 for `postgres://` and `postgresql://` URLs and to 6379 otherwise.
pub fn reachable(url: &str) -> bool {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let default_port = if scheme.starts_with("postgres") { 5432 } else { 6379 };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().unwrap_or(default_port)),
        _ => (host_port, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "localhost" } else { host };
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}
