//! [`Detached`]: a throwaway server left running on purpose, and how to stop it later.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which kind of server a [`Detached`] record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// A [`PgInstance`](crate::PgInstance).
    Postgres,
    /// A [`RedisInstance`](crate::RedisInstance).
    Redis,
}

/// A server that outlives the instance that started it, as `cargo xtask services up` leaves them.
///
/// It serializes to JSON so that a later process can [stop](Self::stop) it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// The kind of server.
    pub service: Service,
    /// The URL to connect to it.
    pub url: String,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The server's process id when it was detached (the postmaster's for PostgreSQL).
    pub pid: Option<u32>,
    /// The directory holding its files, removed by [`stop`](Self::stop).
    pub dir: PathBuf,
}

impl Detached {
    /// Stops the server (fast shutdown for PostgreSQL, `SHUTDOWN NOSAVE` for Redis),
    /// waits until it has exited, and removes its directory.
    ///
    /// # Errors
    ///
    /// Fails if the server does not stop.
    pub fn stop(&self) -> anyhow::Result<()> {
        match self.service {
            Service::Postgres => crate::postgres::stop_detached(&self.dir),
            Service::Redis => crate::redis::stop_detached(self.port, &self.dir),
        }
    }
}
