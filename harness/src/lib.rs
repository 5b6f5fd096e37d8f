//! Launchers for throwaway PostgreSQL and Redis servers, and the URLs of the shared test services.
//!
//! Ordinary tests use [`postgres_url`] and [`redis_url`]; fault tests that stop, kill or
//! restart a server start their own [`PgInstance`] or [`RedisInstance`], which cleans up
//! after itself on drop, even while a panicking test unwinds. Servers whose process was killed
//! before it could drop them are stopped by the next process that starts one
//! ([`reap_abandoned`]).

mod detached;
mod dirs;
mod owner;
mod ports;
mod postgres;
mod proxy;
mod redis;
mod services;
mod tls;

pub use detached::{Detached, Service};
pub use dirs::target_dir;
pub use owner::reap_abandoned;
pub use ports::free_port;
pub use postgres::{PgBuilder, PgHba, PgInstance};
pub use proxy::Proxy;
pub use redis::{RedisBuilder, RedisInstance};
pub use services::{postgres_url, reachable, redis_url};
pub use tls::{CLIENT_ROLE, CertFiles, TestPki};
