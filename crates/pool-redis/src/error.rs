//! Errors, one type per operation: [`ConfigError`] (settings, environment, URL) and
//! [`BuildError`] (starting the pools); acquires fail with [`AcquireError`].

use std::time::Duration;

/// Why an exclusive checkout failed: the engine's error over fred's.
pub type AcquireError = pool_core::AcquireError<fred::error::Error>;

/// A setting, an environment variable or the URL is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds a value that does not parse, or that its setting refuses.
    #[error(transparent)]
    Env(#[from] pool_core::EnvError),
    /// The Redis URL does not parse (the password, if any, is masked).
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// fred's parse error.
        #[source]
        source: fred::error::Error,
    },
    /// A pool's setting makes no sense.
    #[error("invalid setting {setting} = {value} of Redis pool {pool:?}: {reason}")]
    Invalid {
        /// The pool's name.
        pool: String,
        /// The setting (`pool_size`, `max_connections`...).
        setting: String,
        /// The rejected value.
        value: String,
        /// What the value must be.
        reason: String,
    },
    /// The configuration names no pool.
    #[error("the Redis configuration names no pool")]
    NoPools,
}

/// Why the pools could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine refused a setting or found no runtime.
    #[error("cannot start Redis pool {pool:?}: {source}")]
    Pool {
        /// The pool's name.
        pool: String,
        /// The engine's error.
        #[source]
        source: pool_core::BuildError,
    },
    /// A shared client could not connect.
    #[error("Redis pool {pool:?} cannot connect to {url}: {source}")]
    Connect {
        /// The pool's name.
        pool: String,
        /// The server's URL, with any password masked.
        url: String,
        /// fred's error.
        #[source]
        source: fred::error::Error,
    },
    /// A shared client did not connect within `connect_timeout`.
    #[error("Redis pool {pool:?} could not connect to {url} within {after:?}")]
    ConnectTimeout {
        /// The pool's name.
        pool: String,
        /// The server's URL, with any password masked.
        url: String,
        /// The `connect_timeout` that ran out.
        after: Duration,
    },
}

/// `url` with its passwords hidden (see [`pool_core::redact_url`]).
pub(crate) use pool_core::redact_url as redact;
