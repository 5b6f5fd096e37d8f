//! Errors, one type per operation: [`PgError`] (opening, checking or resetting a pooled
//! connection), [`UrlError`], [`ConfigError`], [`SessionError`], [`ClusterBuildError`],
//! [`TokenError`].

use pool_core::{AcquireError, BuildError, CredentialError, RegisterError};

use crate::tls::TlsError;

/// Why a pooled connection could not be opened, checked or reset: the error of
/// [`PgManager`](crate::PgManager), which the pools report as the last connect error of an
/// acquire that timed out ([`pool_core::TimeoutError`], naming the pool).
///
/// None of its messages holds a password, a token or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// sqlx's error: the server refused (authentication, a database that does not exist), the
    /// network failed, a query failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// TLS could not be set up as asked: the server does not offer it, its certificate is not
    /// trusted, does not name the host or has expired, it refused the client certificate, or a
    /// certificate file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The credential provider had no password to give.
    #[error("cannot connect to {server}: {source}")]
    Credentials {
        /// The server: `host:port`, or the socket's path.
        server: String,
        /// The provider's error.
        #[source]
        source: CredentialError,
    },
    /// No candidate server accepted a writable session
    /// ([`PgManager::primaries`](crate::PgManager::primaries), `target_session_attrs=read-write`):
    /// each was a standby, read-only or unreachable.
    #[error("no writable server among the candidates: {servers}")]
    NoWritableServer {
        /// Each server tried, `host:port: why` (`read-only: a standby in recovery`, the
        /// connect's error), separated by `; `.
        servers: String,
    },
    /// A connect statement or the after-connect hook failed.
    #[error("the connect hook failed on {server}: {source}")]
    Hook {
        /// The server: `host:port`, or the socket's path.
        server: String,
        /// The statement's or the hook's error.
        #[source]
        source: sqlx::Error,
    },
}

impl PgError {
    /// sqlx's error, if there is one: a connect the server refused, a failed query, or what
    /// failed a connect statement or the hook.
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            PgError::Sqlx(e) | PgError::Hook { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// A PostgreSQL URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL URL {url:?}: {source}")]
#[non_exhaustive]
pub struct UrlError {
    /// The URL, with its password hidden.
    pub url: String,
    /// What sqlx said about it.
    #[source]
    pub source: sqlx::Error,
}

/// A setting of a [`PostgresConfig`](crate::PostgresConfig) that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The setting, its value and why it is refused.
    #[error("invalid setting {setting} = {value}: {reason}")]
    Invalid {
        /// The setting, as a configuration file names it (`pool_size`, `replicas[1]`).
        setting: String,
        /// Its value, passwords hidden.
        value: String,
        /// What the value must be.
        reason: String,
    },
}

/// Why a cluster could not hand out a session.
///
/// Replica failures never surface here: a replica that cannot serve is banned and the read goes
/// to the primary, so this is always the primary pool's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The primary pool timed out or is closed.
    #[error(transparent)]
    Acquire(#[from] AcquireError<PgError>),
}

/// Why a cluster could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterBuildError {
    /// One of the cluster's pools refused its settings.
    #[error("cannot build pool {pool:?} of cluster: {source}")]
    Pool {
        /// The pool's name (`main`, `main-replica-1`...).
        pool: String,
        /// What was wrong.
        #[source]
        source: BuildError,
    },
    /// A cluster setting has a value that makes no sense.
    #[error("invalid cluster setting {setting} = {value}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// The rejected value, in Rust's debug format.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// The configuration the cluster was built from refused a setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pool of the cluster could not be registered.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Why a causal token could not be taken or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The query for the WAL position failed (on a replica, PostgreSQL refuses it: "recovery is
    /// in progress").
    #[error("cannot read the primary's WAL position: {0}")]
    Query(#[source] sqlx::Error),
    /// A token's text is not a WAL position like `16/B374D848`.
    #[error("invalid causal token {0:?}: expected a WAL position like 16/B374D848")]
    Parse(String),
}
