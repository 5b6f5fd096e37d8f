//! Launchers for throwaway PostgreSQL and Redis servers, and the URLs of the shared test services.
//!
//! Ordinary tests use [`postgres_url`] and [`redis_url`]; fault tests that stop, kill or
//! restart a server start their own [`PgInstance`] or [`RedisInstance`], which cleans up
//! after itself on drop, even while a panicking test unwinds. Servers whose process was killed
//! before it could drop them are stopped by the next process that starts one
//! ([`reap_abandoned`]). [`RedisInstance::freeze`] stops a server without closing its sockets;
//! [`SentinelGroup`] (a master, a replica, three sentinels) and [`RedisCluster`] (three masters
//! with a replica each) are built of `RedisInstance`s, for failovers.
//!
//! # TLS, authentication and sockets
//!
//! [`TestPki::generate`] writes a throwaway PKI as PEM files: a CA ([`TestPki::ca_pem`]), a
//! server certificate for `localhost` and `127.0.0.1` ([`TestPki::server`]), a client
//! certificate whose common name is the role [`CLIENT_ROLE`] ([`TestPki::client`]), an expired
//! server certificate, an unrelated CA ([`TestPki::other_ca_pem`]), and on demand server
//! certificates for other names and client certificates for other roles.
//!
//! [`PgInstance::builder`] starts PostgreSQL with TLS ([`PgBuilder::ssl`]), a CA for client
//! certificates ([`PgBuilder::ssl_ca`]), login roles, and one of three [`PgHba`]s: `trust`,
//! client certificates only, or SCRAM passwords. Whatever the choice, the Unix socket
//! ([`PgInstance::socket_dir`], [`PgInstance::socket_url`]) stays `trust`ed, so that
//! [`PgInstance::psql`] works as `postgres`; [`PgInstance::set_password`] rotates a password.
//! [`RedisInstance::builder`] starts Redis on a TLS port ([`RedisBuilder::tls`]), with or
//! without a plaintext port, requiring client certificates or not, and with a Unix socket
//! ([`RedisInstance::tls_url`], `rediss://`; [`RedisInstance::unix_url`], `redis+unix://`).
//!
//! ```no_run
//! use pool_harness::{PgHba, PgInstance, RedisInstance, TestPki};
//!
//! let pki = TestPki::generate()?;
//! let pg = PgInstance::builder()
//!     .ssl(pki.server())
//!     .ssl_ca(pki.ca_pem())
//!     .hba(PgHba::ScramSha256)
//!     .role_with_password("app", "first")
//!     .start()?;
//! let url = format!(
//!     "postgres://app:first@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
//!     pg.port(),
//!     pki.ca_pem().display()
//! );
//! pg.set_password("app", "second")?;
//!
//! let redis = RedisInstance::builder()
//!     .tls(pki.server(), pki.ca_pem())
//!     .tls_auth_clients(pki.client())
//!     .start()?;
//! assert_eq!(redis.tls_url(), Some(format!("rediss://127.0.0.1:{}", redis.port())));
//! # let _ = url;
//! # anyhow::Ok(())
//! ```

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
pub use redis::{KilledMaster, RedisBuilder, RedisCluster, RedisInstance, SentinelGroup};
pub use services::{postgres_url, reachable, redis_url};
pub use tls::{CLIENT_ROLE, CertFiles, TestPki};
